"""Train a MobileNetV3 classifier, segmenter or detector (the same command as `mnv3-train`).

    python train.py --config configs/quickstart.yaml --model_dir runs/quickstart
"""

from mnv3 import cli

if __name__ == "__main__":
    cli.main(cli.train)

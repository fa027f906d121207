"""Export a trained run to TFLite for Android (the same command as `mnv3-export`).

    python export_tflite.py --model_dir runs/quickstart [--quant float32,int8]
"""

from mnv3 import cli

if __name__ == "__main__":
    cli.main(cli.export)

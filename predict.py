"""Top classes for your own photos (the same command as `mnv3-predict`).

    python predict.py --model runs/quickstart/export/mobilenet_v3_small_64_int8.tflite photo.jpg
"""

from mnv3 import cli

if __name__ == "__main__":
    cli.main(cli.predict)

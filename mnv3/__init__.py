"""mnv3: train MobileNetV3 image classifiers and ship them as TFLite."""

"""The export engine: `mnv3.export.pipeline.run(cfg, model_dir)` writes
model_dir/export/.

It looks the task up once and passes it down: tflite.graph rebuilds the network
for TFLite, tflite.convert converts each mode, the task's export half adds
metadata and scores each file, results.report writes the report.
"""

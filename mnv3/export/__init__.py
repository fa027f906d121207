"""TFLite export: `mnv3.export.pipeline.run(cfg, model_dir)` writes model_dir/export/.

modes (what each mode means) -> graph (the network rebuilt for TFLite) ->
convert (+ calibrate, rewrite) -> metadata -> check / evaluate ->
analysis (per-class figures) and plots (pictures) -> report.
"""

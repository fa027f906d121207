"""TFLite parts that know no task: what each mode means (modes), the network
rebuilt for conversion (graph), conversion with our calibration and rewrites
(convert, calibrate, rewrite), MediaPipe metadata (metadata), and running a
file (evaluate, and check in a separate process). The export engine
(mnv3.export) puts them together; tasks pick from them."""

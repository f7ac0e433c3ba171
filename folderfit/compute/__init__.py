"""Where and how a network runs: device, precision and seeding (runtime), the measured CPU engine
for frozen networks (cpu_engine; OpenVINO, optional: openvino_engine), the one inference loop (inference), and a model file ready to
classify (classifier).
"""

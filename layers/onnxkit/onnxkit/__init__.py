"""onnxkit: quantize ONNX models, publish them to S3, serve them from Lambda or SageMaker."""

__version__ = "0.1.0"

"""onnxkit tooling: the CLI, quantization, publishing, example models and the local emulators.

Never imported by a function or the endpoint container: their images carry the runtime
package (``onnxkit``) alone.
"""

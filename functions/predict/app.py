"""Lambda entry point: start loading the model, import the rest beside it, build the handler."""

import os

from onnxkit.coldstart import start_loading  # the standard library and the settings only
from onnxkit.settings import Settings

settings = Settings.from_env(os.environ)
loading = start_loading(settings)  # S3, verify, onnxruntime session: in a thread from here
loading.import_beside()  # numpy + onnxruntime beside the download; back as the session starts

from onnxkit.adapters.lambda_api import build_handler  # noqa: E402  codecs, routes, Powertools

lambda_handler = build_handler(settings, loading=loading)

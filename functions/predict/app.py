"""Lambda entry point: start loading the model, import the rest meanwhile, build the handler."""

import os

from onnxkit.coldstart import start_loading  # standard library and settings only
from onnxkit.settings import Settings

settings = Settings.from_env(os.environ)
loading = start_loading(settings)  # S3, verify, onnxruntime session: in a thread from here

from onnxkit.adapters.lambda_api import build_handler  # noqa: E402  Powertools, codecs, routes

lambda_handler = build_handler(settings, loading=loading)

"""Hermetic tests: no MLflow store from the caller's environment leaks into any test."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_tracking_uri_from_the_environment():
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved

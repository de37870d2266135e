from __future__ import annotations


def pytest_configure(config):
    # registered here (setup.cfg belongs to another owner); --strict-markers stays satisfied
    config.addinivalue_line(
        "markers", "external_env: runs in a separately built environment (fresh bundle venv, MONAI Label, MONAI Deploy)"
    )

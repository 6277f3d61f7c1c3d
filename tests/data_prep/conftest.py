from pathlib import Path

import pytest
from prep_testutil import EVAL_DATA


@pytest.fixture
def eval_data() -> Path:
    return EVAL_DATA

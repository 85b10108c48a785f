from __future__ import annotations

import pytest

from monai_r2gen.errors import ModelConfigError
from monai_r2gen.flags import as_flag
from monai_r2gen.networks.generator_config import GeneratorConfig


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("false", False), ("False", False), (" TRUE ", True), ("no", False),
     ("on", True), (0, False), (1, True), ("0", False), (None, None)],
)  # fmt: skip
def test_written_out_booleans(value, expected) -> None:
    assert as_flag(value, "enabled") is expected


def test_modes_pass_and_other_values_are_refused() -> None:
    assert as_flag("lora", "train_encoder", ("frozen", "lora", "full")) == "lora"
    with pytest.raises(ModelConfigError, match=r"train_encoder must be true or false or one of \['frozen'"):
        as_flag("partial", "train_encoder", ("frozen", "lora", "full"))
    with pytest.raises(ModelConfigError, match="enabled must be true or false, got 2"):
        as_flag(2, "enabled")


def test_generator_config_reads_written_out_booleans() -> None:
    # `--network_config#finding_prompts false` on the bundle command line is the string 'false'
    config = GeneratorConfig(llm_options={"model_type": "llama"}, finding_head="true", finding_prompts="false")
    assert config.finding_head is True and config.finding_prompts is False
    with pytest.raises(ModelConfigError, match="finding_head must be true or false, got 'maybe'"):
        GeneratorConfig(llm_options={"model_type": "llama"}, finding_head="maybe")

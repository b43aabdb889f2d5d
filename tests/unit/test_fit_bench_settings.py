"""config.preset_with and with_settings (the benches' --set and --depth-set): config fields
changed by name=value, typed."""

import pytest

from services.common.config import with_settings
from services.common.errors import InvalidArgumentError
from services.depth.config import DepthConfig
from services.fit.config import preset, preset_with


def test_settings_change_only_the_named_fields_with_their_types():
    cfg = preset_with("default", ("camera_iters=50", "camera_lr=1e-3", "keep_adam_state=True"), 3)
    assert cfg.camera_iters == 50 and isinstance(cfg.camera_iters, int)
    assert cfg.camera_lr == pytest.approx(1e-3) and isinstance(cfg.camera_lr, float)
    assert cfg.seed == 3 and cfg.keep_adam_state is True
    assert preset_with("fast", ("keep_adam_state=false",), 0).keep_adam_state is False
    unchanged = ("iters", "lr", "init_points", "densify_every")
    assert all(getattr(cfg, name) == getattr(preset("default"), name) for name in unchanged)


@pytest.mark.parametrize(
    "setting", ["camera_itrs=5", "camera_iters", "iters=-1", "lr=fast", "keep_adam_state=1"]
)
def test_a_wrong_setting_is_refused(setting):
    with pytest.raises(InvalidArgumentError):
        preset_with("fast", (setting,), seed=0)


def test_depth_settings_change_the_depth_config_and_name_their_flag():
    cfg = with_settings(DepthConfig(), ("offline_bundle_adjust=true", "flow_stride=2"), "depth_set")
    assert cfg.offline_bundle_adjust is True and cfg.flow_stride == 2
    with pytest.raises(InvalidArgumentError) as caught:
        with_settings(DepthConfig(), ("bundle_adjust=true",), "depth_set")
    assert caught.value.field == "depth_set" and "DepthConfig" in caught.value.description

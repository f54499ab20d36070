import numpy as np
import pytest

from neuralworld.actions import ActionError, ActionSpec, Axis, camera_motion_spec, stack

SPEC = ActionSpec(buttons=("forward", "back", "attack"), axes=(Axis("turn", -15, 15, "deg/frame"),), fps=17.5)


def test_layout_and_make():
    assert SPEC.size == 4
    assert SPEC.names == ("forward", "back", "attack", "turn")
    a = SPEC.make(forward=1, turn=-5.0)
    assert a.dtype == np.float32 and a.tolist() == [1, 0, 0, -5]
    assert SPEC.to_dict(a) == {"forward": 1.0, "back": 0.0, "attack": 0.0, "turn": -5.0}
    assert SPEC.noop().tolist() == [0, 0, 0, 0]
    assert stack(SPEC, [{"back": 1}, {"turn": 2}]).shape == (2, 4)


def test_json_round_trip():
    again = ActionSpec.from_json(SPEC.to_json())
    assert again == SPEC
    assert again.axes[0].unit == "deg/frame"
    cam = camera_motion_spec(fps=24)
    assert ActionSpec.from_json(cam.to_json()) == cam


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(3), r"shape \(\.\.\., 4\)"),
        (np.zeros((5, 6)), r"got shape \(5, 6\)"),
        ([[0, 0, 0.5, 0]], r"button 'attack' is 0.5 at index 0"),
        ([[0, 0, 0, 0], [0, 0, 0, 99]], r"axis 'turn' is 99.0 at index 1: outside its range \[-15.0, 15.0\]"),
        ([[np.nan, 0, 0, 0]], r"'forward' is nan at index 0: must be finite"),
        ("forward", r"must be numeric"),
    ],
)
def test_validate_names_the_problem(bad, message):
    with pytest.raises(ActionError, match=message):
        SPEC.validate(bad)


def test_validate_accepts_batches():
    batch = np.zeros((2, 7, 4), np.float32)
    batch[..., 3] = 15.0
    assert SPEC.validate(batch).shape == (2, 7, 4)


def test_unknown_control_name():
    with pytest.raises(ActionError, match="unknown control 'jump'"):
        SPEC.make(jump=1)


def test_normalize_round_trip():
    a = np.array([[1, 0, 1, -15], [0, 1, 0, 7.5]], np.float32)
    n = SPEC.normalize(a)
    assert n[0, 3] == -1 and n[1, 3] == 0.5 and n[0, 0] == 1
    np.testing.assert_allclose(SPEC.denormalize(n), a, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(buttons=("Forward",)), "lower_snake_case"),
        (dict(buttons=("a", "a")), "unique"),
        (dict(buttons=()), "at least one"),
        (dict(buttons=("a",), fps=0), "fps"),
    ],
)
def test_spec_rejects_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionSpec(**kwargs)


def test_axis_range_checked():
    with pytest.raises(ValueError, match="low < high"):
        Axis("turn", 1, -1)


def test_from_json_errors():
    with pytest.raises(ValueError, match="not valid JSON"):
        ActionSpec.from_json("{nope")
    with pytest.raises(ValueError, match="not a valid ActionSpec"):
        ActionSpec.from_json('{"buttons": ["a"]}')
    with pytest.raises(ValueError, match="newer"):
        ActionSpec.from_json('{"version": 99, "buttons": ["a"], "fps": 1}')


def test_diff_explains():
    other = ActionSpec(buttons=("forward",), axes=SPEC.axes, fps=35)
    d = SPEC.diff(other)
    assert "buttons" in d and "fps 17.5 vs 35" in d
    assert SPEC.diff(SPEC) == ""

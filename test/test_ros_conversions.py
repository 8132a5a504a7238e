"""Image and JointState conversions (no ROS graph needed; real sensor_msgs message types)."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages (pip install -e '.[ros]') are not installed")
from sensor_msgs.msg import Image, JointState  # noqa: E402

from gato_ros.ros.conversions import (  # noqa: E402
    ConversionError,
    JointStateMatcher,
    decode_image,
    encode_image,
    image_to_model_input,
    resize_rgb,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("shape", [(64, 64), (480, 640), (7, 3)])
def test_colour_round_trip_any_size(encoding, shape):
    rgb = RNG.integers(0, 256, shape + (3,), dtype=np.uint8)
    out = decode_image(encode_image(rgb, encoding))
    np.testing.assert_array_equal(out, rgb)


def test_mono8_becomes_grey_rgb():
    rgb = RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    out = decode_image(encode_image(rgb, "mono8"))
    assert out.shape == (5, 9, 3)
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.max(np.abs(out[..., 0].astype(np.float32) - luma)) <= 0.5 + 1e-3


def test_row_padding_is_skipped():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = encode_image(rgb, "bgr8")
    padded = np.zeros((4, 5 * 3 + 7), np.uint8)
    padded[:, :15] = np.frombuffer(msg.data, np.uint8).reshape(4, 15)
    msg.step = 22
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(decode_image(msg), rgb)


def test_bgr8_640x480_to_64x64_is_area_average():
    # blocks of 10x7.5 pixels: a constant image stays constant, a left/right split keeps its colours
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[:, :320] = (200, 10, 30)
    rgb[:, 320:] = (5, 250, 90)
    out = image_to_model_input(encode_image(rgb, "bgr8"), 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :32], np.broadcast_to([200, 10, 30], (64, 32, 3)))
    np.testing.assert_array_equal(out[:, 32:], np.broadcast_to([5, 250, 90], (64, 32, 3)))


def test_resize_preserves_mean_and_upscales():
    img = RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    small = resize_rgb(img, 12, 20)  # exact 4x4 blocks
    expect = img.reshape(12, 4, 20, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.max(np.abs(small - expect)) <= 0.5 + 1e-6
    big = resize_rgb(small, 64, 64)
    assert big.shape == (64, 64, 3)
    assert abs(big.astype(float).mean() - small.astype(float).mean()) < 3.0
    assert resize_rgb(img, 48, 80) is img


def _area_reference(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exact area averaging in float64 (each output pixel: the mean of the input area it covers, fractional
    overlaps weighted), from first principles: the integral of the image over the pixel's footprint."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        edges = np.arange(n_out + 1) * n_in / n_out
        w = np.zeros((n_out, n_in))
        for j in range(n_out):
            for i in range(n_in):
                w[j, i] = max(0.0, min(edges[j + 1], i + 1) - max(edges[j], i))
        return w / w.sum(1, keepdims=True)
    rows = np.tensordot(weights(img.shape[0], height), img.astype(np.float64), axes=(1, 0))  # (height, W, C)
    return np.einsum("wj,hjc->hwc", weights(img.shape[1], width), rows)


@pytest.mark.parametrize("shape, size", [((480, 640, 3), (64, 64)), ((480, 640, 4), (64, 64)),
                                         ((480, 640, 1), (64, 64)), ((720, 1280, 3), (64, 64)),
                                         ((480, 640, 3), (96, 128)), ((100, 90, 3), (64, 64)),
                                         ((77, 131, 3), (13, 29))])
def test_shrinking_is_exact_area_averaging(shape, size):
    """The numpy path's block products (camera sizes: 640x480 rows first, 1280x720 columns first) and gathers
    (sizes with no short period) both give area averages to within rounding, also from a padded (strided) frame."""
    from gato_ros.ros import conversions

    if conversions.image_backend() != "numpy":
        pytest.skip("cv_bridge resizes in this process")
    padded = RNG.integers(0, 256, (shape[0], shape[1] * shape[2] + 8), dtype=np.uint8)
    img = padded[:, :shape[1] * shape[2]].reshape(shape)  # rows with padding after them, as `step` allows
    out = resize_rgb(img, *size)
    assert out.shape == size + (shape[2],) and out.dtype == np.uint8
    assert np.max(np.abs(out - _area_reference(img, *size))) <= 0.5 + 1e-3
    if shape[:2] in ((480, 640), (720, 1280)):  # these take the block products (else this test covers the gathers)
        assert conversions._block(shape, size[0], 0) is not None or conversions._block(shape, size[1], 1) is not None


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
        (lambda m: setattr(m, "width", 0), "zero size"),
        (lambda m: setattr(m, "step", 3), "smaller than width"),
        (lambda m: setattr(m, "data", bytes(10)), "truncated"),
        (lambda m: setattr(m, "data", bytes(64 * 64 * 3 + 1)), "more than step"),
    ],
)
def test_bad_images_raise_clear_errors(mutate, match):
    msg = encode_image(np.zeros((64, 64, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(ConversionError, match=match):
        decode_image(msg)


NAMES = ["a", "b", "c"]


def js(names, pos, vel=None):
    m = JointState()
    m.name = list(names)
    m.position = [float(p) for p in pos]
    m.velocity = [] if vel is None else [float(v) for v in vel]
    return m


def test_joint_states_matched_by_name_with_extras():
    matcher = JointStateMatcher(NAMES)
    pos, vel = matcher.match(js(["extra", "c", "a", "b", "finger_right"], [9, 3, 1, 2, 8], [0.9, 0.3, 0.1, 0.2, 0.8]))
    np.testing.assert_array_equal(pos, [1, 2, 3])
    np.testing.assert_array_equal(vel, [0.1, 0.2, 0.3])
    pos, vel = matcher.match(js(["b", "a", "c"], [2, 1, 3]))  # empty velocity -> zeros
    np.testing.assert_array_equal(pos, [1, 2, 3])
    np.testing.assert_array_equal(vel, [0, 0, 0])


def test_joint_state_errors_say_what_to_do():
    matcher = JointStateMatcher(NAMES)
    with pytest.raises(ConversionError, match=r"missing \['c'\].*set the joint_names parameter or remap"):
        matcher.match(js(["a", "b"], [1, 2]))
    with pytest.raises(ConversionError, match="more than once"):
        matcher.match(js(["a", "b", "c", "a"], [1, 2, 3, 4]))
    with pytest.raises(ConversionError, match="3 names but 2 positions"):
        matcher.match(js(["a", "b", "c"], [1, 2]))
    with pytest.raises(ConversionError, match="3 names but 1 velocities"):
        matcher.match(js(["a", "b", "c"], [1, 2, 3], [0]))
    with pytest.raises(ConversionError, match=r"non-finite .* \['b'\]"):
        matcher.match(js(["a", "b", "c"], [1, float("nan"), 3]))
    # a NaN in an ignored extra joint is not our problem
    pos, _ = matcher.match(js(["a", "b", "c", "x"], [1, 2, 3, float("nan")]))
    np.testing.assert_array_equal(pos, [1, 2, 3])

"""Video helpers: nearest-neighbour upscale, caption overlay, MP4 written atomically and readable."""
import numpy as np

from gato_ros.sim.video import VideoWriter, annotate, upscale


def test_upscale_is_nearest_neighbour():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    big = upscale(img, 16)
    assert big.shape == (16, 16, 3)
    np.testing.assert_array_equal(big[::4, ::4], img)
    np.testing.assert_array_equal(big[3, 3], img[0, 0])


def test_annotate_draws_instruction_and_status():
    frame = np.full((128, 128, 3), 200, np.uint8)
    out = annotate(frame, "reach the red ball", success=True, step=12)
    assert out.shape == frame.shape and out.dtype == np.uint8
    top, bottom, middle = out[:14], out[-14:], out[40:80]
    assert (top.min(axis=2) > 150).sum() > 20  # white text on the black band
    assert (bottom[..., 1] > 200).any() and (bottom[..., 0] < 150).any()  # green "SUCCESS"
    np.testing.assert_array_equal(middle, frame[40:80])  # the picture itself is untouched
    np.testing.assert_array_equal(frame, 200)  # input not modified


def test_video_round_trip(tmp_path):
    import imageio.v2 as imageio

    path = tmp_path / "v.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps=20) as w:
        for i in range(7):
            w.append(np.full((64, 64, 3), 30 * i, np.uint8) + rng.integers(0, 5, (64, 64, 3), dtype=np.uint8))
        assert not path.exists()  # only the temporary file exists until close
    assert path.exists() and not list(tmp_path.glob("*.tmp.mp4"))
    reader = imageio.get_reader(str(path))
    frames = [f for f in reader]
    assert len(frames) == 7 and frames[0].shape == (64, 64, 3)
    assert abs(float(frames[3].mean()) - 92) < 8  # colours survive H.264 roughly
    assert reader.get_meta_data()["fps"] == 20


def test_video_without_frames_writes_nothing_and_keeps_an_older_file(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"older video")
    w = VideoWriter(path, fps=20)
    assert w.close() is None
    assert path.read_bytes() == b"older video" and not list(tmp_path.glob("*.tmp.mp4"))

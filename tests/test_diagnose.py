"""experiments.diagnose: the path report against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.diagnose import path_report


def test_path_report_by_hand():
    # 3 glimpses, 4 images. The first glimpse (the centre) never counts as "looking at" the digit.
    distances = np.asarray(
        [
            [0.0, 20.0, 20.0, 20.0],
            [3.0, 9.0, 15.0, 6.0],
            [5.0, 7.0, 30.0, 2.0],
        ],
        np.float32,
    )
    wrong = np.asarray([False, True, True, False])
    offsets = np.asarray([0.0, 3.0, 9.0, 16.0])
    report = path_report(distances, wrong, offsets, radii=[4.0, 8.0])
    assert report["images"] == 4 and report["errors"] == 2 and report["error_pct"] == 50.0
    np.testing.assert_allclose(report["mean_distance_px"], [15.0, 8.25, 11.0])
    np.testing.assert_allclose(report["mean_distance_px_wrong"], [20.0, 12.0, 18.5])
    # Closest later glimpse: 3, 7, 15, 2. Within 4 px: images 0 and 3 (both right).
    within4, within8 = report["near"]
    assert within4 == {
        "radius_px": 4.0,
        "images_pct": 50.0,
        "error_near_pct": 0.0,
        "error_far_pct": 100.0,
        "errors_far": 2,
    }
    # Within 8 px: images 0, 1, 3; image 1 is wrong there, image 2 (15 px) is wrong elsewhere.
    assert within8["images_pct"] == 75.0
    assert within8["error_near_pct"] == pytest.approx(100 / 3, abs=1e-3)
    assert within8["error_far_pct"] == 100.0 and within8["errors_far"] == 1
    # Bands of 4 px: [0, 4) holds images 0 and 1, [8, 12) image 2, [16, 20) image 3.
    assert report["by_offset"] == [
        {"from_px": 0, "to_px": 4, "images": 2, "error_pct": 50.0},
        {"from_px": 8, "to_px": 12, "images": 1, "error_pct": 100.0},
        {"from_px": 16, "to_px": 20, "images": 1, "error_pct": 0.0},
    ]


def test_path_report_without_errors_has_no_wrong_distances():
    report = path_report(np.ones((2, 3), np.float32), np.zeros(3, bool), np.zeros(3), [1.0])
    assert report["errors"] == 0 and report["mean_distance_px_wrong"] is None
    assert report["near"][0]["images_pct"] == 100.0 and report["near"][0]["error_far_pct"] is None

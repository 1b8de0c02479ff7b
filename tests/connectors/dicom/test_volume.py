import numpy as np
import pytest

from connectors.dicom import CTVolume


def _volume() -> CTVolume:
    theta = np.radians(20)
    direction = np.array([[1, 0, 0], [0, np.cos(theta), np.sin(theta)], [0, -np.sin(theta), np.cos(theta)]])
    return CTVolume(
        hu=np.zeros((4, 5, 6), np.float32),
        spacing=(2.5, 0.8, 0.7),
        origin=(-10.0, -20.0, 30.0),
        direction=direction,
        series_uid="1.2",
        study_uid="1.3",
    )


def test_voxel_to_patient_follows_spacing_and_direction():
    v = _volume()
    np.testing.assert_allclose(v.voxel_to_patient([0, 0, 0]), [-10, -20, 30])
    # one step along each array axis moves by that axis' spacing along its direction column
    np.testing.assert_allclose(v.voxel_to_patient([1, 0, 0]) - v.origin, 2.5 * v.direction[:, 2])
    np.testing.assert_allclose(v.voxel_to_patient([0, 1, 0]) - v.origin, 0.8 * v.direction[:, 1])
    np.testing.assert_allclose(v.voxel_to_patient([0, 0, 1]) - v.origin, 0.7 * v.direction[:, 0])


def test_patient_to_voxel_inverts_voxel_to_patient():
    v = _volume()
    idx = np.array([[0.5, 1.25, 3.0], [3, 4, 5]])
    np.testing.assert_allclose(v.patient_to_voxel(v.voxel_to_patient(idx)), idx, atol=1e-9)


def test_bad_inputs_are_refused():
    v = _volume()
    with pytest.raises(ValueError, match="last axis of 3"):
        v.voxel_to_patient([1, 2])
    with pytest.raises(ValueError, match="3-D"):
        CTVolume(
            hu=np.zeros((4, 5)),
            spacing=(1, 1, 1),
            origin=(0, 0, 0),
            direction=np.eye(3),
            series_uid="",
            study_uid="",
        )
    with pytest.raises(ValueError, match="positive"):
        CTVolume(
            hu=np.zeros((1, 2, 2)),
            spacing=(0, 1, 1),
            origin=(0, 0, 0),
            direction=np.eye(3),
            series_uid="",
            study_uid="",
        )

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apps.nodule.luna16 import Luna16, MetaImageError, read_mhd, voxel_to_world, world_to_voxel
from connectors.dicom.volume import CTVolume

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100"
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"
UID_C = "1.3.6.1.4.1.14519.5.2.1.6279.6001.300"


def _array(shape=(3, 4, 5), dtype=np.int16) -> np.ndarray:
    """Distinct values per voxel, negative ones included (like HU), shape (Z, Y, X)."""
    return (np.arange(np.prod(shape)).reshape(shape) * 7 - 1000).astype(dtype)


def write_mhd(
    path,
    arr: np.ndarray,
    *,
    element_type: str = "MET_SHORT",
    spacing_xyz=(0.7, 0.8, 2.5),
    offset=(-150.0, -170.5, -300.25),
    matrix=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    msb: bool = False,
    local: bool = False,
    extra: dict | None = None,
    data_bytes: bytes | None = None,
    write_raw: bool = True,
):
    """Write ``arr`` (Z, Y, X) as a MetaImage the way ITK lays it out (x fastest)."""
    path = path.parent / f"{path.name}.mhd"  # not with_suffix: UIDs contain dots
    raw = path.parent / f"{path.name[:-4]}.raw"
    fields = {
        "ObjectType": "Image",
        "NDims": "3",
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": str(msb),
        "CompressedData": "False",
        "TransformMatrix": " ".join(map(str, matrix)),
        "Offset": " ".join(map(str, offset)),
        "CenterOfRotation": "0 0 0",
        "AnatomicalOrientation": "RAI",
        "ElementSpacing": " ".join(map(str, spacing_xyz)),
        "DimSize": " ".join(map(str, arr.shape[::-1])),
        "ElementType": element_type,
        **(extra or {}),
    }
    fields["ElementDataFile"] = "LOCAL" if local else raw.name
    header = "".join(f"{k} = {v}\n" for k, v in fields.items()).encode()
    data = (
        arr.astype(arr.dtype.newbyteorder(">" if msb else "<")).tobytes()
        if data_bytes is None
        else data_bytes
    )
    if local:
        path.write_bytes(header + data)
    else:
        path.write_bytes(header)
        if write_raw:
            raw.write_bytes(data)
    return path


# --- read_mhd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("msb", [False, True])
@pytest.mark.parametrize("local", [False, True])
def test_read_mhd_round_trip(tmp_path, msb, local):
    arr = _array()
    path = write_mhd(tmp_path / UID_A, arr, msb=msb, local=local)
    vol = read_mhd(path)
    assert isinstance(vol, CTVolume)
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.hu, arr.astype(np.float32))
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))  # (z, y, x)
    assert vol.origin == pytest.approx((-150.0, -170.5, -300.25))  # (x, y, z)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    assert vol.series_uid == UID_A


def test_read_mhd_keeps_stored_dtype(tmp_path):
    arr = _array()
    vol = read_mhd(write_mhd(tmp_path / "a", arr, msb=True), dtype=None)
    assert vol.hu.dtype == np.int16 and vol.hu.dtype.isnative
    np.testing.assert_array_equal(vol.hu, arr)


@pytest.mark.parametrize(
    ("element_type", "dtype"),
    [
        ("MET_UCHAR", np.uint8),
        ("MET_CHAR", np.int8),
        ("MET_USHORT", np.uint16),
        ("MET_INT", np.int32),
        ("MET_FLOAT", np.float32),
        ("MET_DOUBLE", np.float64),
    ],
)
def test_read_mhd_element_types(tmp_path, element_type, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - (12 if np.issubdtype(dtype, np.signedinteger) else 0)).astype(
        dtype
    )
    if np.issubdtype(dtype, np.floating):
        arr = arr + dtype(0.25)
    vol = read_mhd(write_mhd(tmp_path / "a", arr, element_type=element_type, msb=True), dtype=None)
    assert vol.hu.dtype == dtype
    np.testing.assert_array_equal(vol.hu, arr)


def test_read_mhd_direction_and_world_voxel(tmp_path):
    # Index axis i runs along patient +y, j along -x, k along +z (a 90 degree turn about z).
    matrix = (0, 1, 0, -1, 0, 0, 0, 0, 1)
    spacing_xyz = (0.7, 0.8, 2.5)
    offset = np.array([10.0, -20.0, -30.0])
    vol = read_mhd(write_mhd(tmp_path / "a", _array(), matrix=matrix, spacing_xyz=spacing_xyz, offset=offset))
    np.testing.assert_array_equal(vol.direction[:, 0], [0, 1, 0])
    np.testing.assert_array_equal(vol.direction[:, 1], [-1, 0, 0])
    np.testing.assert_array_equal(vol.direction[:, 2], [0, 0, 1])

    # Independent formula: world = offset + D @ (spacing * (i, j, k)), D's columns from the header triples.
    d = np.array(matrix, dtype=float).reshape(3, 3).T
    kji = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [2.5, 1.25, 3.75]])
    expected = offset + (kji[:, ::-1] * np.array(spacing_xyz)) @ d.T
    world = voxel_to_world(kji, vol)
    np.testing.assert_allclose(world, expected, atol=1e-12)
    np.testing.assert_allclose(world[1], offset + [0, 0.7, 0])  # one column along +y
    np.testing.assert_allclose(world[2], offset + [-0.8, 0, 0])  # one row along -x
    np.testing.assert_allclose(world_to_voxel(world, vol), kji, atol=1e-12)


def test_world_voxel_shape_checks(tmp_path):
    vol = read_mhd(write_mhd(tmp_path / "a", _array()))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        world_to_voxel(np.zeros(3), vol)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        voxel_to_world(np.zeros((2, 4)), vol)


def test_read_mhd_header_size(tmp_path):
    arr = _array()
    data = arr.astype("<i2").tobytes()
    path = write_mhd(tmp_path / "a", arr, extra={"HeaderSize": "16"}, data_bytes=b"x" * 16 + data)
    np.testing.assert_array_equal(read_mhd(path, dtype=None).hu, arr)
    path = write_mhd(tmp_path / "b", arr, extra={"HeaderSize": "-1"}, data_bytes=b"y" * 9 + data)
    np.testing.assert_array_equal(read_mhd(path, dtype=None).hu, arr)


def test_read_mhd_missing_header(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mhd"):
        read_mhd(tmp_path / "nothere.mhd")


def test_read_mhd_missing_raw(tmp_path):
    path = write_mhd(tmp_path / "a", _array(), write_raw=False)
    with pytest.raises(FileNotFoundError, match=r"a\.raw"):
        read_mhd(path)


@pytest.mark.parametrize("local", [False, True])
def test_read_mhd_wrong_size(tmp_path, local):
    arr = _array()
    path = write_mhd(tmp_path / "a", arr, local=local, data_bytes=arr.tobytes()[:-2])
    name = "a.mhd" if local else "a.raw"
    with pytest.raises(MetaImageError, match=rf"{name}: holds 118 data bytes, expected 120"):
        read_mhd(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"CompressedData": "True"}, "compressed .mhd is not supported"),
        ({"ElementType": "MET_WEIRD"}, "unknown ElementType 'MET_WEIRD'"),
        ({"NDims": "2"}, "NDims = '2', only 3-D"),
        ({"ObjectType": "Mesh"}, "only Image"),
        ({"ElementNumberOfChannels": "3"}, "ElementNumberOfChannels"),
        ({"BinaryData": "False"}, "ASCII"),
        ({"DimSize": "5 4"}, "DimSize has 2 values, expected 3"),
        ({"ElementSpacing": "1 0 1"}, "must be positive"),
        ({"TransformMatrix": "1 0 0 1 0 0 0 0 1"}, "singular"),
        ({"Offset": "a b c"}, "not a list of numbers"),
    ],
)
def test_read_mhd_bad_headers(tmp_path, extra, message):
    path = write_mhd(tmp_path / "bad", _array(), extra=extra)
    with pytest.raises(MetaImageError, match=message) as info:
        read_mhd(path)
    assert "bad.mhd" in str(info.value)


def test_read_mhd_not_metaimage(tmp_path):
    path = tmp_path / "x.mhd"
    path.write_text("hello world\n")
    with pytest.raises(MetaImageError, match="Key = Value"):
        read_mhd(path)
    path.write_text("NDims = 3\n")
    with pytest.raises(MetaImageError, match="no ElementDataFile"):
        read_mhd(path)


# --- Luna16 ------------------------------------------------------------------------------------------


@pytest.fixture()
def luna(tmp_path):
    root = tmp_path / "luna16"
    for subset, uid in ((0, UID_A), (0, UID_B), (3, UID_C)):
        (root / f"subset{subset}").mkdir(parents=True, exist_ok=True)
        write_mhd(root / f"subset{subset}" / uid, _array(), msb=(uid == UID_C))
    pd.DataFrame(
        {
            "seriesuid": [UID_A, UID_A, UID_C, "1.2.3.not.on.disk"],
            "coordX": [-140.0, -149.3, -145.0, 1.0],
            "coordY": [-168.1, -165.0, -169.0, 2.0],
            "coordZ": [-295.25, -298.0, -299.0, 3.0],
            "diameter_mm": [5.5, 12.25, 3.0, 4.0],
        }
    ).to_csv(root / "annotations.csv", index=False)
    return root


def test_luna16_index(luna):
    ds = Luna16(luna)
    assert ds.series_uids() == sorted([UID_A, UID_B, UID_C])
    assert ds.subset_of(UID_A) == 0 and ds.subset_of(UID_C) == 3
    assert ds.folds() == {0: sorted([UID_A, UID_B]), 3: [UID_C]}
    assert "series=3" in repr(ds)
    with pytest.raises(KeyError, match="not in any subset"):
        ds.subset_of("1.2.3")


def test_luna16_volume_and_annotations(luna):
    ds = Luna16(luna)
    vol = ds.volume(UID_C)
    np.testing.assert_array_equal(vol.hu, _array().astype(np.float32))
    assert vol.series_uid == UID_C

    all_rows = ds.annotations()
    assert list(all_rows.columns) == ["seriesuid", "x_mm", "y_mm", "z_mm", "diameter_mm"]
    assert len(all_rows) == 4
    a = ds.annotations(UID_A)
    assert len(a) == 2 and (a["seriesuid"] == UID_A).all()
    assert ds.annotations(UID_B).empty and ds.truths(UID_B) == []

    truths = ds.truths(UID_A)
    np.testing.assert_allclose(truths[0][0], [-140.0, -168.1, -295.25])
    assert truths[1][1] == 12.25
    # The first annotation lies inside the volume's grid.
    kji = world_to_voxel(np.array([truths[0][0]]), ds.volume(UID_A))
    np.testing.assert_allclose(kji[0], [(-295.25 + 300.25) / 2.5, (-168.1 + 170.5) / 0.8, (-140 + 150) / 0.7])


def test_luna16_candidates(luna):
    ds = Luna16(luna)
    with pytest.raises(FileNotFoundError, match="candidates"):
        ds.candidates()
    pd.DataFrame(
        {
            "seriesuid": [UID_A, UID_B],
            "coordX": [1.0, 2.0],
            "coordY": [3.0, 4.0],
            "coordZ": [5.0, 6.0],
            "class": [0, 1],
        }
    ).to_csv(luna / "candidates.csv", index=False)
    ds = Luna16(luna)
    assert list(ds.candidates().columns) == ["seriesuid", "x_mm", "y_mm", "z_mm", "class"]
    assert ds.candidates(UID_B)["class"].tolist() == [1]


def test_luna16_csv_in_csvfiles_folder(luna):
    (luna / "CSVFILES").mkdir()
    (luna / "annotations.csv").rename(luna / "CSVFILES" / "annotations.csv")
    assert len(Luna16(luna).annotations()) == 4


def test_luna16_missing_annotations(luna):
    (luna / "annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match="annotations.csv"):
        Luna16(luna)


def test_luna16_bad_annotations(luna):
    (luna / "annotations.csv").write_text("seriesuid,coordX,coordY\n1,2,3\n")
    with pytest.raises(ValueError, match="missing column.*coordZ.*diameter_mm"):
        Luna16(luna)


def test_luna16_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        Luna16(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no subset0"):
        Luna16(tmp_path / "empty")


def test_luna16_duplicate_series(luna):
    (luna / "subset5").mkdir()
    write_mhd(luna / "subset5" / UID_A, _array())
    with pytest.raises(ValueError, match="in both"):
        Luna16(luna)

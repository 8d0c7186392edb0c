"""Multi-person records (the MuPoTS-3D layout): stored per image, evaluated one person at a time."""

import cv2
import grain
import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.data import pipeline
from cascaded_lift.data import sources
from cascaded_lift.datasets import pose_builder

MUCO = skeleton.MUCO
PEOPLE = (2, 0, 3)  # people per image, an empty image included


class TinyMultiPerson(pose_builder.PoseDatasetBuilder):
  """Three 120x160 images with 2, 0 and 3 people on the MuCo joint set, with detections."""
  name = "tiny_multi_person"
  VERSION = tfds.core.Version("1.0.0")
  SKELETON = MUCO
  MULTI_PERSON = True
  HAS_DETECTIONS = True

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i, n in enumerate(PEOPLE):
      ok, buf = cv2.imencode(".jpg", np.full((120, 160, 3), 40 * i, np.uint8))
      people = np.arange(n, dtype=np.float32)
      joints_img = 20 + people[:, None, None] * 30 + np.zeros((n, 21, 2), np.float32)
      joints_img[..., 1] += np.arange(21)[None, :] * 2
      joints_cam = np.concatenate([joints_img - 60, np.full((n, 21, 1), 3000.0)], -1)
      joints_cam[:, :, 2] += np.arange(21) * 10 + 1000 * people[:, None]
      yield i, self.make_multi_person_example(
          f"img{i}", image=buf.tobytes(), bbox=np.stack([20 + people * 30, np.full(n, 20), np.full(n, 25),
                                                          np.full(n, 45)], 1),
          joints_img=joints_img, joints_vis=np.ones((n, 21)), joints_cam=joints_cam,
          is_valid=(people % 2 == 0).astype(np.float32), focal=[1000, 1000], principal=[80, 60],
          image_id=100 + i, subject=1, frame=i, det_bbox=np.ones((1, 4)), det_root_cam=np.ones((1, 3)))


def test_multi_person_records_round_trip_and_flatten(tmp_path):
  builder = TinyMultiPerson(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  assert builder.info.metadata["multi_person"] is True
  ds = builder.as_data_source("test", decoders={"image": tfds.decode.SkipDecoding()})
  assert [len(ds[i]["bbox"]) for i in range(3)] == list(PEOPLE)
  assert ds[2]["joints_cam"].shape == (3, 21, 3) and ds[2]["det_bbox"].shape == (1, 4)
  src = sources.PoseSource("tiny[test]", ds, MUCO, multi_person=True, has_detections=True)
  records = pipeline._EvalRecords(src, batch=4, shard_index=0, shard_count=1)  # pylint: disable=protected-access
  fn = pipeline._EvalExample(MUCO, skeleton.H36M, pipeline.crop_config({"image_size": 64, "output_size": 16}))  # pylint: disable=protected-access
  batches = list(grain.MapDataset.source(records).map(fn).batch(4, drop_remainder=False))
  assert len(batches) == 2  # 5 people -> 2 batches of 4, the last padded
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0, 0, 0])
  ids = np.concatenate([b["image_id"] for b in batches])[:5]
  people = np.concatenate([b["person"] for b in batches])[:5]
  assert list(zip(ids, people)) == [(100, 0), (100, 1), (102, 0), (102, 1), (102, 2)]
  np.testing.assert_array_equal(np.concatenate([b["is_valid"] for b in batches])[:5], [1, 0, 1, 0, 1])
  # Each example carries its own person's joints, mapped from MuCo's order onto Human3.6M's by name.
  pelvis_muco, pelvis_h36m = MUCO.index("Pelvis"), skeleton.H36M.index("Pelvis")
  for b, i in ((batches[0], 1), (batches[1], 0)):
    person, image = int(b["person"][i]), int(b["image_id"][i]) - 100
    raw = ds[image]["joints_cam"][person]
    np.testing.assert_allclose(b["joints_cam"][i, pelvis_h36m], raw[pelvis_muco])
  # Joints Human3.6M has but MuCo lacks (Nose, Torso) are invisible.
  assert np.all(batches[0]["joints_vis"][:, skeleton.H36M.index("Nose")] == 0)

"""The TensorBoard side of the metric files."""

import pytest

from train_helpers import run_python

_WRITE = r"""
import struct, sys
from train.metrics_io import MetricWriter
writer = MetricWriter(WORKDIR)
writer.write(3, "train", {"loss": 2.5})
writer.close()
print("torch imported:", "torch" in sys.modules)
# TensorBoard's event file: TFRecords of serialized Event protos
# (8-byte length, 4-byte CRC, data, 4-byte CRC).
from tensorboardX.proto import event_pb2
import pathlib
data = next(pathlib.Path(WORKDIR, "tensorboard").glob("events.*")).read_bytes()
scalars, offset = [], 0
while offset < len(data):
    length, = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 16 + length
    scalars += [(event.step, v.tag, v.simple_value)
                for v in event.summary.value]
print("scalars:", scalars)
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    # tensorboardX imports torch whenever it is installed; the point is
    # that the trainer does not pay for that in an environment that has it.
    pytest.importorskip("torch")
    out = run_python(_WRITE.replace("WORKDIR", repr(str(tmp_path))))
    assert "torch imported: False" in out
    assert "scalars: [(3, 'train/loss', 2.5)]" in out

"""TrainDialog's "Use N GPUs" row (issue 19): shown only when torch sees several GPUs; then the run goes to
core.torchrun (torchrun in a child process, tested in tests/core/test_core_ddp.py) and BATCH_SIZE must be
shared equally. No program is started here."""

from __future__ import annotations

import functools

import pytest
import torch

from geoseg.core.torchrun import train_torchrun
from geoseg.core.train import train
from geoseg.ui.train_dialog import SETTINGS_PREFIX, TrainDialog
from tests.support.chips import make_chips
from tests.support.helpers import fresh_settings, open_dialog, set_widgets


@pytest.fixture(scope="module")
def chips_dir(tmp_path_factory) -> str:
    return make_chips(str(tmp_path_factory.mktemp("gpus")), 64, 64)


@pytest.fixture()
def dialog(qgis_app, qgis_iface):
    with fresh_settings(SETTINGS_PREFIX), open_dialog(TrainDialog, qgis_app, qgis_iface) as dlg:
        yield dlg


def test_gpus_row_only_with_several_gpus_and_the_run_goes_to_torchrun(dialog, chips_dir, tmp_path):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert dialog.gpus.isVisibleTo(dialog) == (count > 1) and dialog.gpus.value() == 1
    dialog.show_gpus(4)  # as on a machine with 4 GPUs
    assert dialog.gpus.isVisibleTo(dialog) and dialog.gpusLabel.isVisibleTo(dialog)
    assert (dialog.gpus.minimum(), dialog.gpus.maximum(), dialog.gpus.value()) == (1, 4, 1)
    assert dialog.gpus.toolTip() and "BATCH_SIZE / N" in dialog.gpus.toolTip()

    dialog.chipsDir.setFilePath(chips_dir)
    dialog.outputModel.setFilePath(str(tmp_path / "m.pt"))
    set_widgets(dialog, modelOptions='{"base_width": 4, "depth": 2}', epochs=1, batchSize=6, device=1, gpus=4)
    assert dialog.validate_inputs() is None  # 6 chips cannot be shared by 4 processes
    assert "BATCH_SIZE 6 cannot be shared equally by 4 processes" in dialog.messageLabel.text()

    dialog.batchSize.setValue(8)
    p = dialog.validate_inputs()
    assert p is not None and p.batch_size == 8  # the global batch
    task = dialog._create_task(p)
    assert isinstance(task.func, functools.partial) and task.func.func is train_torchrun
    assert task.func.keywords == {"processes": 4} and "on 4 GPUs" in task.description()
    dialog.gpus.setValue(1)
    assert dialog._create_task(p).func is train  # one GPU: in QGIS's process, as before
    dialog.show_gpus(1)
    assert not dialog.gpus.isVisibleTo(dialog)

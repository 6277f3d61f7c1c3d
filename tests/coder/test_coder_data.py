import numpy as np
import pytest
from coder_testutil import make_data_dir, make_tokenizer

from coder.data import EpochSampler, SamplerState, TokenStream, TrainData
from data_prep.format import DataDirError, write_indexed


def test_every_epoch_visits_every_chunk_once_in_a_seed_and_epoch_order():
    s = EpochSampler(10, 4, seed=7)
    batches = [s.next_batch() for _ in range(5)]  # 20 chunks = 2 epochs; batch 3 straddles
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not (flat[:10] == flat[10:]).all()  # reshuffled per epoch
    assert s.epoch_progress == 2.0
    other = EpochSampler(10, 4, seed=7)  # same seed: same order, whatever the batch size
    assert (np.concatenate([other.next_batch() for _ in range(5)]) == flat).all()
    assert not (np.concatenate([EpochSampler(10, 4, seed=8).next_batch() for _ in range(5)]) == flat).all()
    resumed = EpochSampler(10, 4, seed=7, state=SamplerState(chunks_seen=8))
    assert (np.concatenate([resumed.next_batch() for _ in range(3)]) == flat[8:]).all()


def test_stream_reads_across_shards(tmp_path):
    write_indexed(tmp_path / "train" / "00000", [np.arange(5), np.arange(5, 7)], np.uint16)
    write_indexed(tmp_path / "train" / "00001", [np.arange(7, 12)], np.uint16)
    stream = TokenStream(tmp_path, "train")
    assert stream.num_tokens == 12
    assert stream.read(4, 6).tolist() == list(range(4, 10))


def test_train_data_rows_and_val_batches(tmp_path):
    tok = make_tokenizer()
    data = TrainData(make_data_dir(tmp_path / "d", tok), seq_len=16, global_batch=4, seed=0)
    assert data.unique_tokens == data.sampler.num_chunks * 16 <= data.train.num_tokens
    rows = data.rows(np.array([0, 1]))
    assert rows.shape == (2, 16) and rows.dtype == np.int64
    assert (rows.reshape(-1) == data.train.read(0, 32)).all()
    val = data.val_batches(max_sequences=5, batch=2)
    assert [b.shape[0] for b in val] == [2, 2, 1]
    with pytest.raises(DataDirError, match="fewer tokens than one sequence|fewer than one sequence"):
        TrainData(tmp_path / "d", seq_len=10**6, global_batch=4, seed=0)
    with pytest.raises(DataDirError, match="does not exist"):
        TrainData(tmp_path / "missing", seq_len=16, global_batch=4, seed=0)

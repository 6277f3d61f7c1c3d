import numpy as np
import pytest
from coder_testutil import make_data_dir, make_tokenizer

from coder.data import EpochSampler, SamplerState, TokenStream, TrainData
from data_prep.format import DataDirError, write_indexed


def test_every_epoch_visits_every_chunk_once_in_a_seed_and_epoch_order():
    s = EpochSampler(10, 4, seed=7)
    batches = [s.next_batch() for _ in range(5)]  # 20 chunks = 2 epochs; batch 3 straddles
    flat = np.concatenate(batches)
    # ids are epoch * num_chunks + chunk
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10, 20))
    assert not (flat[:10] == flat[10:] - 10).all()  # reshuffled per epoch
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


def _docs_dir(tmp_path, n_docs=12):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(6, 300, rng.integers(5, 40)), 0) for _ in range(n_docs)]
    write_indexed(tmp_path / "train" / "00000", docs[:7], np.uint16)
    write_indexed(tmp_path / "train" / "00001", docs[7:], np.uint16)
    write_indexed(tmp_path / "val" / "00000", docs[:1], np.uint16)
    from data_prep.format import SCHEMA_VERSION, atomic_write_json

    atomic_write_json(tmp_path / "manifest.json", {"schema_version": SCHEMA_VERSION, "complete": True})
    make_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return tmp_path, docs


def _epoch_stream(data, epoch):
    n = data.sampler.num_chunks
    return data.rows(epoch * n + np.arange(n)).reshape(-1)


@pytest.mark.parametrize("repack", [True, False])
def test_each_epoch_is_the_documents_in_some_order_cut_into_chunks(tmp_path, repack):
    d, docs = _docs_dir(tmp_path)
    data = TrainData(d, seq_len=16, global_batch=4, seed=0, repack=repack)
    streams = [_epoch_stream(data, e) for e in range(4)]
    assert (streams[0] == np.concatenate(docs)[: len(streams[0])]).all()  # epoch 0: shard order
    for s in streams:  # every epoch: whole documents back to back (the tail past the last chunk cut)
        pos, rest = 0, list(range(len(docs)))
        while pos < len(s):
            i = next(i for i in rest if (docs[i][: len(s) - pos] == s[pos : pos + len(docs[i])]).all())
            rest.remove(i)
            pos += len(docs[i])
    moved = [not (s == streams[0]).all() for s in streams[1:]]
    assert all(moved) if repack else not any(moved)


def test_repacking_is_a_function_of_seed_and_epoch(tmp_path):
    d, _ = _docs_dir(tmp_path)
    a = TrainData(d, seq_len=16, global_batch=4, seed=3)
    b = TrainData(d, seq_len=16, global_batch=4, seed=3)
    for e in (2, 1, 3, 2):  # any order of access, as after a resume
        assert (_epoch_stream(a, e) == _epoch_stream(b, e)).all()
    assert not (_epoch_stream(TrainData(d, seq_len=16, global_batch=4, seed=4), 2) == _epoch_stream(a, 2)).all()

"""pipeline.chroma_server: a throw-away `chroma run` on the loopback interface."""

from __future__ import annotations

import socket

import pytest

import pipeline.chroma_server as chroma_server
from pipeline.chroma_server import ChromaServer, ChromaServerError, chroma_executable, free_port
from helpers import process_alive

pytestmark = pytest.mark.skipif(chroma_executable() is None, reason="the chroma CLI is not installed")



def test_server_answers_on_loopback_and_is_stopped_on_exit_even_after_an_error(tmp_path):
    import chromadb
    from chromadb.config import Settings

    with pytest.raises(ZeroDivisionError):
        with ChromaServer(tmp_path / "data") as server:
            pid = server.pid
            assert server.host == "127.0.0.1" and server.heartbeat() and process_alive(pid)
            client = chromadb.HttpClient(host=server.host, port=server.port, settings=Settings(anonymized_telemetry=False))
            client.create_collection("bench").add(ids=["a"], embeddings=[[1.0, 0.0]])
            assert client.get_collection("bench").count() == 1
            1 / 0
    assert server.process is None and not process_alive(pid) and not server.heartbeat()
    server.stop()  # stopping twice is harmless
    assert (tmp_path / "data").is_dir() and (tmp_path / "data.chroma.log").is_file()


def test_a_port_in_use_fails_with_the_server_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ChromaServer(tmp_path / "data", port=port, start_timeout=30)
        with pytest.raises(ChromaServerError) as info:
            server.start()
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message and ("exited with code" in message or "did not answer" in message)
    assert "its log:" in message and server.process is None


def test_missing_cli_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(chroma_server, "chroma_executable", lambda: None)
    with pytest.raises(ChromaServerError, match=r"`chroma` command is not installed.*pip install chromadb"):
        ChromaServer(tmp_path / "data").start()
    assert not (tmp_path / "data").exists()


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))

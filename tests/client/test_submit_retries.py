"""A submit whose answer is lost on the way back is retried with its Idempotency-Key and makes
exactly one job: through a proxy on 127.0.0.1 that forwards each request to a real server and
then drops the connection instead of passing the first answers on."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO

import pytest
from servers import Server

from trainwire import AsyncClient, Client


def read_message(stream: BinaryIO) -> bytes | None:
    """One HTTP/1.1 message (headers and a Content-Length body); None at the end of the stream."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + stream.read(length)


class AnswerDroppingProxy:
    """Forwards every request to `upstream`; for the first `drop` POSTs, reads the server's
    answer and closes the client's connection without sending it."""

    def __init__(self, upstream_port: int, drop: int):
        self.upstream_port, self.drop, self.dropped = upstream_port, drop, 0
        self.posts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            downstream, answers = conn.makefile("rb"), upstream.makefile("rb")
            while (request := read_message(downstream)) is not None:
                upstream.sendall(request)
                answer = read_message(answers)
                assert answer is not None
                with self.lock:
                    post = request.startswith(b"POST ")
                    self.posts += post
                    lose = post and self.dropped < self.drop
                    self.dropped += lose
                if lose:
                    return  # the job was made; its answer goes nowhere
                conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(shared_server: Server) -> Iterator[AnswerDroppingProxy]:
    proxy = AnswerDroppingProxy(shared_server.port, drop=2)
    yield proxy
    proxy.close()


def test_a_submit_whose_answers_are_lost_makes_one_job(
    shared_server: Server, proxy: AnswerDroppingProxy
) -> None:
    with Client(shared_server.url) as direct:
        before = {job.id for job in direct.jobs()}
        with Client(proxy.url) as tw:
            job = tw.submit("numpy", steps=3, label="lost answers")
        assert (proxy.dropped, proxy.posts) == (2, 3)
        made = [j for j in direct.jobs() if j.id not in before]
        assert [j.id for j in made] == [job.id]
        assert direct.wait(job.id).status.value == "succeeded"

        sweeps_before = {s.id for s in direct.sweeps()}
        proxy.dropped = 0
        with Client(proxy.url) as tw:
            sweep = tw.submit_sweep("numpy", {"seed": [1, 2]}, steps=2)
        assert [s.id for s in direct.sweeps() if s.id not in sweeps_before] == [sweep.id]
        assert len(sweep.jobs) == 2


def test_the_async_client_retries_a_lost_answer_too(
    shared_server: Server, proxy: AnswerDroppingProxy
) -> None:
    async def main() -> str:
        async with AsyncClient(proxy.url) as tw:
            return (await tw.submit("numpy", steps=2)).id

    with Client(shared_server.url) as direct:
        before = {job.id for job in direct.jobs()}
        job_id = asyncio.run(main())
        assert proxy.dropped == 2
        assert [j.id for j in direct.jobs() if j.id not in before] == [job_id]


def test_without_retries_the_first_request_made_the_job(
    shared_server: Server, proxy: AnswerDroppingProxy
) -> None:
    """What the key is for: the request whose answer was lost did reach the server."""
    with Client(shared_server.url) as direct:
        before = {job.id for job in direct.jobs()}
        with Client(proxy.url, submit_retry_timeout=0) as tw, pytest.raises(Exception) as lost:
            tw.submit("numpy", steps=2, idempotency_key="given-by-the-caller")
        assert "ServerUnreachable" in type(lost.value).__name__
        made = [j.id for j in direct.jobs() if j.id not in before]
        assert len(made) == 1
        # the caller's own retry with its key finds it
        assert direct.submit("numpy", steps=2, idempotency_key="given-by-the-caller").id == made[0]

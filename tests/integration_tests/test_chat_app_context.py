"""The model's context is read from the store as only the last messages it needs, however long the conversation."""

from __future__ import annotations

import time
from pathlib import Path

from examples.chat_app.storage import SQLiteStore


async def test_context_reads_only_the_last_messages_the_model_sees(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chat.db")
    try:
        user = await store.create_user("hash", 10)
        other = await store.create_user("hash2", 10)
        assert user is not None and other is not None
        session = (await store.create_session(user["id"], 10))["id"]
        big = "x" * 20_000
        for i in range(2_000):  # a long conversation: 40 MB of old messages the context must not read
            await store.add_message(session, "user", big if i < 1_990 else f"question {i}")
            status = "error" if i == 1_998 else "complete"
            await store.add_message(session, "assistant", big if i < 1_990 else f"answer {i}", status=status)
        began = time.perf_counter()
        rows = await store.context(user["id"], session, 5)
        took = time.perf_counter() - began
        # The last 5 the model reads, oldest first: the failed answer to question 1998 is skipped.
        assert [r["content"] for r in rows] == ["question 1997", "answer 1997", "question 1998", "question 1999",
                                                "answer 1999"]
        assert [r["role"] for r in rows] == ["user", "assistant", "user", "user", "assistant"]
        began = time.perf_counter()
        assert len(await store.messages(user["id"], session)) == 4_000
        whole = time.perf_counter() - began
        assert took < whole / 5, f"{took:.3f} s vs {whole:.3f} s for the whole conversation: it was read whole"
        assert await store.context(other["id"], session, 5) == []  # another user's conversation: nothing
    finally:
        store.close()


async def test_a_conversation_is_paged_back_from_the_newest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chat.db")
    try:
        user = await store.create_user("hash", 10)
        session = (await store.create_session(user["id"], 10))["id"]
        for i in range(7):
            await store.add_message(session, "user", f"m{i}")
        assert await store.count_messages(user["id"], session) == 7
        assert await store.count_messages("someone else", session) == 0
        last = await store.messages(user["id"], session, limit=3)
        assert [m["content"] for m in last] == ["m4", "m5", "m6"]
        earlier = await store.messages(user["id"], session, limit=3, before=last[0]["id"])
        assert [m["content"] for m in earlier] == ["m1", "m2", "m3"]
        first = await store.messages(user["id"], session, limit=3, before=earlier[0]["id"])
        assert [m["content"] for m in first] == ["m0"]
        assert [m["content"] for m in await store.messages(user["id"], session)] == [f"m{i}" for i in range(7)]
    finally:
        store.close()


async def test_a_full_conversation_refuses_one_more_message_with_409(tmp_path: Path) -> None:
    import httpx

    from tests.helpers.chat_app import TEST_HOST, server_module

    server = server_module()
    settings = server.Settings(db_path=tmp_path / "chat.db", preload=False, allowed_hosts=(TEST_HOST,),
                               max_messages=4)
    app = server.create_app(settings)
    store = app.state.service.store
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}") as c:
            token = (await c.post("/api/users")).json()["token"]
            c.headers["Authorization"] = f"Bearer {token}"
            session = (await c.post("/api/sessions")).json()["id"]
            for text in ("one", "two", "three"):  # as if three turns were stored already
                await store.add_message(session, "user", text)
            service = app.state.service
            service.tokenizer = type("Words", (), {"encode": lambda self, t, **k: t.split()})()
            response = await c.post(f"/api/sessions/{session}/messages", json={"content": "four"})
            assert response.status_code == 409 and "CHAT_MAX_MESSAGES=4" in response.json()["detail"]
            page = (await c.get(f"/api/sessions/{session}", params={"limit": 2})).json()
            assert [m["content"] for m in page["messages"]] == ["two", "three"]
    finally:
        app.state.service.profiles.close()
        store.close()

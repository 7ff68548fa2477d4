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

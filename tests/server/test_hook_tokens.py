"""Hook tokens: derivation, verification, forgery."""

from stepd.server.engine import hook_tokens


def test_a_token_names_its_hook_and_is_stable() -> None:
    key = b"k" * 32
    secret = hook_tokens.run_secret(key, "run-1")
    token = hook_tokens.make_token(secret, "run-1", "hook:1")
    assert token == hook_tokens.make_token(secret, "run-1", "hook:1")
    assert hook_tokens.verify((key,), token) == hook_tokens.HookRef("run-1", "hook:1")
    assert len(hook_tokens._unb64(token.split(".")[3])) * 8 >= 128


def test_forged_or_malformed_tokens_are_refused() -> None:
    key = b"k" * 32
    token = hook_tokens.make_token(hook_tokens.run_secret(key, "run-1"), "run-1", "hook:1")
    other_key = hook_tokens.make_token(
        hook_tokens.run_secret(b"x" * 32, "run-1"), "run-1", "hook:1"
    )
    swapped = token.replace(token.split(".")[2], hook_tokens._b64(b"hook:2"))
    for bad in (other_key, swapped, token + "x", "h1.a.b", "", "nonsense", "h1.!!.!!.!!"):
        assert hook_tokens.verify((key,), bad) is None


def test_the_hook_secret_and_the_database_key_are_both_needed() -> None:
    database_key, secret = b"d" * 32, b"s" * 32
    (server_key,) = hook_tokens.server_keys(database_key, [secret])
    assert server_key not in (database_key, secret)
    token = hook_tokens.make_token(hook_tokens.run_secret(server_key, "r"), "r", "hook:1")
    assert hook_tokens.verify((server_key,), token) == hook_tokens.HookRef("r", "hook:1")
    # What a copy of the database gives: the database key alone.
    assert hook_tokens.server_keys(database_key, []) == (database_key,)
    assert hook_tokens.verify((database_key,), token) is None


def test_a_rotated_secret_keeps_verifying_until_it_is_removed() -> None:
    database_key = b"d" * 32
    old, new = b"o" * 32, b"n" * 32
    (old_key,) = hook_tokens.server_keys(database_key, [old])
    issued = hook_tokens.make_token(hook_tokens.run_secret(old_key, "r"), "r", "hook:1")
    rotated = hook_tokens.server_keys(database_key, [new, old])
    assert hook_tokens.verify(rotated, issued) == hook_tokens.HookRef("r", "hook:1")
    fresh = hook_tokens.make_token(hook_tokens.run_secret(rotated[0], "r"), "r", "hook:2")
    assert hook_tokens.verify(hook_tokens.server_keys(database_key, [new]), fresh) is not None
    assert hook_tokens.verify(hook_tokens.server_keys(database_key, [new]), issued) is None

"""Hook tokens: derivation, verification, forgery."""

from stepd.server.engine import hook_tokens


def test_a_token_names_its_hook_and_is_stable() -> None:
    key = b"k" * 32
    secret = hook_tokens.run_secret(key, "run-1")
    token = hook_tokens.make_token(secret, "run-1", "hook:1")
    assert token == hook_tokens.make_token(secret, "run-1", "hook:1")
    assert hook_tokens.verify(key, token) == hook_tokens.HookRef("run-1", "hook:1")
    assert len(hook_tokens._unb64(token.split(".")[3])) * 8 >= 128


def test_forged_or_malformed_tokens_are_refused() -> None:
    key = b"k" * 32
    token = hook_tokens.make_token(hook_tokens.run_secret(key, "run-1"), "run-1", "hook:1")
    other_key = hook_tokens.make_token(
        hook_tokens.run_secret(b"x" * 32, "run-1"), "run-1", "hook:1"
    )
    swapped = token.replace(token.split(".")[2], hook_tokens._b64(b"hook:2"))
    for bad in (other_key, swapped, token + "x", "h1.a.b", "", "nonsense", "h1.!!.!!.!!"):
        assert hook_tokens.verify(key, bad) is None

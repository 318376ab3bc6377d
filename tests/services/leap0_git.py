"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_git.py BASE_URL API_KEY SANDBOX_ID REPO_URL USER PASSWORD
A coding agent's git session through ``sandbox.git``; prints one JSON object of what it saw."""

from __future__ import annotations

import json
import sys
from typing import Any

from leap0 import Leap0Client


def result(found: Any) -> list[Any]:
    return [found.exit_code, found.output]


def main() -> None:
    base_url, key, sandbox_id, url, user, password = sys.argv[1:7]
    seen: dict[str, Any] = {}
    with Leap0Client(api_key=key, base_url=base_url) as client:
        sandbox = client.sandboxes.get(sandbox_id)
        git = sandbox.git
        repo = "/home/user/repo"
        seen["wrong_password"] = result(
            git.clone(url=url, path="/home/user/denied", username=user, password="nope")
        )
        seen["clone"] = result(git.clone(url=url, path=repo, username=user, password=password))
        seen["create_branch"] = result(git.create_branch(path=repo, name="feature", checkout=True))
        # leap0's examples run commands in /home/user
        seen["edit"] = sandbox.process.execute(
            command="echo hello > repo/new.txt && pwd", cwd="/home/user"
        ).stdout
        seen["status"] = result(git.status(path=repo))
        seen["add"] = result(git.add(path=repo, files=["new.txt"]))
        seen["diff_staged"] = result(git.diff_staged(path=repo))
        committed = git.commit(path=repo, message="add new.txt", author="Agent", email="agent@example.com")
        assert committed.result is not None
        seen["commit"] = [committed.sha, *result(committed.result)]
        seen["head"] = sandbox.process.execute(command="git -C repo rev-parse HEAD", cwd="/home/user").stdout
        seen["push"] = result(
            git.push(
                path=repo,
                remote="origin",
                branch="feature",
                set_upstream=True,
                username=user,
                password=password,
            )
        )
        seen["log"] = result(git.log(path=repo, max_count=5))
        seen["show"] = result(git.show(path=repo, revision=committed.sha or "HEAD"))
        seen["diff_main"] = result(git.diff(path=repo, target="main"))
        sandbox.process.execute(command="echo more >> repo/new.txt", cwd="/home/user")
        seen["diff_unstaged"] = result(git.diff_unstaged(path=repo, context_lines=0))
        git.add(path=repo, files=["new.txt"])
        seen["reset"] = result(git.reset(path=repo))
        seen["staged_after_reset"] = result(git.diff_staged(path=repo))
        sandbox.process.execute(command="git -C repo checkout -- new.txt", cwd="/home/user")
        seen["checkout_main"] = result(git.checkout_branch(path=repo, branch="main"))
        seen["pull"] = result(
            git.pull(path=repo, remote="origin", branch="feature", username=user, password=password)
        )
        seen["pulled_file"] = sandbox.process.execute(command="cat repo/new.txt", cwd="/home/user").stdout
        seen["branches"] = result(git.branches(path=repo, branch_type="all"))
        seen["delete_branch"] = result(git.delete_branch(path=repo, name="feature"))
        seen["branches_after"] = result(git.branches(path=repo))
        seen["not_a_repo"] = result(git.status(path="/tmp"))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

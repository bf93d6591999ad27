"""The agent's own identity when it is not root: a uid or gid without a name is refused with what to do."""

from __future__ import annotations

import pytest

from mailshard.agent.identity import IdentityError, unprivileged
from mailshard.api.constants import MAIL_USER_ID

pytestmark = pytest.mark.unit

OPENSHIFT_UID = 1000650000
"""An id as OpenShift's restricted SCC picks them: from the namespace's range, with no passwd entry."""


def test_the_images_user_runs_without_switching() -> None:
    me = unprivileged(MAIL_USER_ID, MAIL_USER_ID, "vmail", "vmail")
    assert (me.user, me.group, me.uid, me.gid, me.switch) == ("vmail", "vmail", MAIL_USER_ID, MAIL_USER_ID, False)
    assert me.spawn_kwargs() == {}  # children run as the agent does


def test_a_uid_without_a_passwd_entry_is_refused_naming_the_fix() -> None:
    with pytest.raises(IdentityError, match=rf"uid {OPENSHIFT_UID}, which has no passwd entry.*uid {MAIL_USER_ID}"):
        unprivileged(OPENSHIFT_UID, 0, None, "root")


def test_a_gid_without_a_group_entry_is_refused_naming_the_fix() -> None:
    with pytest.raises(IdentityError, match=rf"gid {OPENSHIFT_UID}, which has no group entry.*{MAIL_USER_ID}"):
        unprivileged(MAIL_USER_ID, OPENSHIFT_UID, "vmail", None)

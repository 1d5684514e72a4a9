"""Windows: the agent key readable by SYSTEM and Administrators only, set on write and checked
on load.

POSIX modes mean nothing on Windows (os.open's 0o600 only clears the read-only flag), and a file
under %ProgramData% inherits an ACL that lets every local user read it. So the key gets an
explicit, protected DACL (no inherited entries) before anything is written into it, and a key
that anyone else can read is refused on load, naming the file and the fix. pywin32 is imported
inside the functions: nothing here runs, or is needed, off Windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from estate.inventory.errors import EstateError

__all__ = ["ADMINISTRATORS_SID", "SYSTEM_SID", "KeyAccessError", "check", "protect",
           "require_administrator"]

SYSTEM_SID = "S-1-5-18"  # NT AUTHORITY\SYSTEM (LocalSystem: the service's account)
ADMINISTRATORS_SID = "S-1-5-32-544"  # BUILTIN\Administrators, whatever the display language
_TRUSTED = (SYSTEM_SID, ADMINISTRATORS_SID)
# winnt.h: ACCESS_DENIED_ACE_TYPE and its object and callback forms. A deny entry grants
# nothing, so it never makes a key exposed; every other entry in a DACL may grant.
_DENY_ACE_TYPES = frozenset({0x1, 0x6, 0xA, 0xC})
_INHERIT_ONLY_ACE = 0x8  # applies to a folder's children only, never to the file itself


class KeyAccessError(EstateError):
    """The key is, or would be, readable by someone other than SYSTEM and Administrators, or
    this process could not read it back; the message names the file, who, and the fix."""


def require_administrator() -> None:
    """Refuse before a key is created that this process could not read back.

    Raises:
        KeyAccessError: the process runs neither as SYSTEM nor elevated.
    """
    import win32security

    admins = win32security.ConvertStringSidToSid(ADMINISTRATORS_SID)
    # The token's enabled groups: an administrator's unelevated token has Administrators
    # only as a deny-only group, and CheckTokenMembership says no to it.
    if not win32security.CheckTokenMembership(None, admins):
        raise KeyAccessError(
            "on Windows the agent key is readable only by SYSTEM and Administrators: run this "
            "from an elevated prompt (Run as administrator)")


def protect(path: Path) -> None:
    """Give `path` a protected DACL: full control for SYSTEM and Administrators, nobody else.

    Raises:
        KeyAccessError: the DACL could not be set.
    """
    import ntsecuritycon
    import win32security

    dacl = win32security.ACL()
    for sid in _TRUSTED:
        dacl.AddAccessAllowedAce(win32security.ACL_REVISION, ntsecuritycon.FILE_ALL_ACCESS,
                                 win32security.ConvertStringSidToSid(sid))
    # PROTECTED_: the folder's inheritable entries (Users: read under %ProgramData%) no
    # longer apply. The owner is left as it is: the administrator or SYSTEM that created it.
    try:
        win32security.SetNamedSecurityInfo(
            str(path), win32security.SE_FILE_OBJECT,
            win32security.DACL_SECURITY_INFORMATION
            | win32security.PROTECTED_DACL_SECURITY_INFORMATION,
            None, None, dacl, None)
    except win32security.error as exc:
        raise KeyAccessError(f"cannot restrict the agent key {path} to SYSTEM and "
                         f"Administrators: {exc.strerror}") from None


def check(path: Path) -> None:
    """Refuse a key that anyone but SYSTEM and Administrators can read.

    Raises:
        KeyAccessError: with who can read it and the icacls command that fixes it.
    """
    import ntsecuritycon
    import win32security

    try:
        descriptor = win32security.GetNamedSecurityInfo(
            str(path), win32security.SE_FILE_OBJECT, win32security.DACL_SECURITY_INFORMATION)
    except win32security.error as exc:
        raise KeyAccessError(f"cannot read the permissions of the agent key {path}: "
                         f"{exc.strerror}") from None
    # Reading the data, or rewriting the DACL or the owner to read it later.
    reading = (ntsecuritycon.FILE_READ_DATA | ntsecuritycon.GENERIC_READ
               | ntsecuritycon.GENERIC_ALL | ntsecuritycon.WRITE_DAC
               | ntsecuritycon.WRITE_OWNER)
    dacl = descriptor.GetSecurityDescriptorDacl()
    if dacl is None:  # a NULL DACL: no access check at all
        raise KeyAccessError(f"the agent key {path} has no access control list: everyone can read "
                         f"it. {_fix(path, [])}")
    readers: dict[str, str] = {}
    for index in range(dacl.GetAceCount()):
        ace = dacl.GetAce(index)
        (ace_type, ace_flags), mask, sid = ace[0], ace[1], ace[-1]  # object ACEs: sid is last
        if ace_type in _DENY_ACE_TYPES or ace_flags & _INHERIT_ONLY_ACE or not mask & reading:
            continue
        text = win32security.ConvertSidToStringSid(sid)
        if text not in _TRUSTED:
            readers[text] = _account(win32security, sid, text)
    if readers:
        raise KeyAccessError(f"the agent key {path} can be read by {', '.join(readers.values())}, "
                         f"not only by SYSTEM and Administrators. {_fix(path, list(readers))}")


def _fix(path: Path, sids: list[str]) -> str:
    """The icacls command (elevated prompt) that leaves SYSTEM and Administrators alone."""
    remove = "".join(f" *{sid}" for sid in sids)
    return (f'Fix, from an elevated prompt: icacls "{path}" /inheritance:r /grant:r '
            f'*{SYSTEM_SID}:F *{ADMINISTRATORS_SID}:F' + (f" /remove{remove}" if remove else "")
            + " -- or delete the key and enrol again")


def _account(win32security: Any, sid: Any, text: str) -> str:
    """`DOMAIN\\name (S-...)`, or the SID alone when it names no account (a deleted user)."""
    try:
        name, domain, _ = win32security.LookupAccountSid(None, sid)
    except win32security.error:
        return text
    return f"{domain}\\{name} ({text})" if domain else f"{name} ({text})"

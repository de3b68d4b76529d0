//! Who may use the control socket and what each may do (docs/security.md): the daemon's uid
//! and `--admin-uid` uids are admins (group-wide settings, every slot); `--allow-uid` uids may
//! register workers, act on the slots they registered, and read; every other uid is refused.

use super::refusal::Refusal;
use reuseport_worker::ErrorCode;

/// The uids the daemon was told about, besides its own.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The daemon's effective uid: always an admin.
    pub own_uid: u32,
    /// `--allow-uid`: may connect.
    pub allow: Vec<u32>,
    /// `--admin-uid`: may connect and act as the daemon's uid does.
    pub admin: Vec<u32>,
}

impl Access {
    /// Who `uid` is to the daemon, or `None` when it may not use it at all.
    pub fn actor(&self, uid: u32) -> Option<Actor> {
        let admin = uid == self.own_uid || self.admin.contains(&uid);
        (admin || self.allow.contains(&uid)).then_some(Actor { uid, admin })
    }

    /// Whether uids other than the daemon's may connect (the socket's mode then lets them).
    pub fn open_to_others(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.admin)
            .any(|&uid| uid != self.own_uid)
    }
}

/// The uid on the other end of a control connection (SO_PEERCRED), with its rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    pub uid: u32,
    /// May change group-wide settings and act on every slot.
    pub admin: bool,
}

impl Actor {
    /// Group-wide settings (the policy) are the admins'.
    pub fn may_set(&self, what: &str) -> Result<(), Refusal> {
        if self.admin {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::NotAdmin,
            format!(
                "uid {uid} may not {what}: group-wide settings belong to the daemon's uid and \
                 to uids given with --admin-uid; ask an admin, or start the daemon with \
                 --admin-uid {uid}",
                uid = self.uid
            ),
        ))
    }
}

/// A per-slot request, named as a refusal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotAction {
    Weight,
    Drain,
    Close,
    Undrain,
}

impl SlotAction {
    /// The verb, as in "may drain it".
    pub fn verb(self) -> &'static str {
        match self {
            Self::Weight => "re-weight",
            Self::Drain => "drain",
            Self::Close => "drain --close",
            Self::Undrain => "undrain",
        }
    }
}

/// Whether `actor` may act on a slot whose registered worker is of `owner` (`None`: taken over
/// from an earlier daemon, its worker not registered again).
pub fn may_act(
    actor: Actor,
    slot: u32,
    owner: Option<u32>,
    action: SlotAction,
) -> Result<(), Refusal> {
    if actor.admin || owner == Some(actor.uid) {
        return Ok(());
    }
    let verb = action.verb();
    Err(Refusal::new(
        ErrorCode::NotOwner,
        match owner {
            Some(owner) => format!(
                "slot {slot} belongs to uid {owner}: only its owner or an admin (the daemon's uid \
                 or --admin-uid) may {verb} it"
            ),
            None => format!(
                "slot {slot} was taken over from an earlier daemon and its worker has not \
                 registered again: until it does (and then owns it), only an admin (the daemon's \
                 uid or --admin-uid) may {verb} it"
            ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            own_uid: 0,
            allow: vec![1001],
            admin: vec![1002],
        }
    }

    #[test]
    fn the_daemon_uid_and_admin_uids_are_admins_allowed_uids_are_not() {
        let a = access();
        assert_eq!(
            a.actor(0),
            Some(Actor {
                uid: 0,
                admin: true
            })
        );
        assert_eq!(
            a.actor(1002),
            Some(Actor {
                uid: 1002,
                admin: true
            })
        );
        assert_eq!(
            a.actor(1001),
            Some(Actor {
                uid: 1001,
                admin: false
            })
        );
        assert_eq!(a.actor(1003), None);
        assert!(a.open_to_others());
        assert!(!Access::default().open_to_others());
        let only_admin = Access {
            admin: vec![7],
            ..Access::default()
        };
        assert!(only_admin.open_to_others());
    }

    #[test]
    fn a_slot_is_its_owners_and_the_admins() {
        let user = Actor {
            uid: 1001,
            admin: false,
        };
        let admin = Actor {
            uid: 1002,
            admin: true,
        };
        assert!(may_act(user, 3, Some(1001), SlotAction::Drain).is_ok());
        assert!(may_act(admin, 3, Some(1001), SlotAction::Close).is_ok());
        assert!(may_act(admin, 3, None, SlotAction::Undrain).is_ok());
        let refused = may_act(user, 3, Some(0), SlotAction::Drain).err();
        assert!(refused
            .as_ref()
            .is_some_and(|r| r.code == ErrorCode::NotOwner
                && r.message.contains("slot 3 belongs to uid 0")
                && r.message.contains("may drain it")));
        let refused = may_act(user, 3, None, SlotAction::Weight).err();
        assert!(refused.is_some_and(|r| r.message.contains("taken over")));
        assert!(user.may_set("set the policy").is_err_and(
            |r| r.code == ErrorCode::NotAdmin && r.message.contains("--admin-uid 1001")
        ));
        assert!(admin.may_set("set the policy").is_ok());
    }
}

"""Who is in the cluster: one view, fed by one source (static seeds now; SWIM, etcd, Consul later)."""

from twisted_dhm.membership.view import ALIVE, DEAD, LEFT, STATES, SUSPECT, Member, MembershipView

__all__ = ["ALIVE", "DEAD", "LEFT", "STATES", "SUSPECT", "Member", "MembershipView"]

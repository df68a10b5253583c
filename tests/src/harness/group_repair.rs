//! Repairs consumer-group state the local broker (Tansu 0.6.0) cannot get out of by itself.
//!
//! Its group coordinator can name as a group's leader a member that is no longer in the group:
//! a heartbeat that finds the leader's session expired removes the member but keeps it as the
//! leader, a leader leaving a forming group stays the leader, and reloading a formed group from
//! storage keeps whatever leader it had. Every member then waits for an assignment from a leader
//! that does not exist and holds no partition while its heartbeats succeed. The services cannot
//! fix this from outside the broker, so the harness does, while the broker is stopped: such a
//! group goes back to forming with no leader and a new generation, so the members' next
//! heartbeat tells them to rejoin and the first to rejoin leads and assigns.

use std::path::Path;

use serde_json::{json, Value};

/// Puts a stored group back to forming, without a leader, one generation on, if its leader is not
/// one of its members or `force` is set. Returns whether it changed anything.
pub fn reset_group(detail: &mut Value, force: bool) -> bool {
    let Some((_, inner)) = detail
        .get("state")
        .and_then(Value::as_object)
        .and_then(|state| state.iter().next())
    else {
        return false;
    };
    let leader = inner.get("leader").and_then(Value::as_str);
    let is_member = |id: &str| detail.get("members").and_then(|m| m.get(id)).is_some();
    let phantom_leader = leader.is_some_and(|leader| !is_member(leader));
    if !phantom_leader && !force {
        return false;
    }
    let forming = json!({
        "Forming": {
            "leader": null,
            "protocol_name": inner.get("protocol_name").cloned().unwrap_or(Value::Null),
            "protocol_type": inner.get("protocol_type").cloned().unwrap_or(Value::Null),
        }
    });
    let generation = detail.get("generation_id").and_then(Value::as_i64).unwrap_or(0);
    detail["state"] = forming;
    detail["generation_id"] = json!(generation + 1);
    true
}

/// Applies [`reset_group`] to every group stored in the broker's SQLite file (the broker must
/// be stopped), forcing it for the groups named in `stuck`. Returns the groups it reset.
pub fn repair_stored_groups(broker_db: &Path, stuck: &[String]) -> anyhow::Result<Vec<String>> {
    let connection = rusqlite::Connection::open(broker_db)?;
    let stored: Vec<(i64, String, String)> = connection
        .prepare(
            "SELECT d.id, g.name, d.detail FROM consumer_group_detail d JOIN consumer_group g ON d.consumer_group = g.id",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut reset = Vec::new();
    for (id, group, detail) in stored {
        let mut value: Value = serde_json::from_str(&detail)?;
        if reset_group(&mut value, stuck.contains(&group)) {
            connection.execute(
                "UPDATE consumer_group_detail SET detail = ?1 WHERE id = ?2",
                rusqlite::params![value.to_string(), id],
            )?;
            reset.push(group);
        }
    }
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: &str, leader: Option<&str>, members: &[&str]) -> Value {
        let members: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m.to_string(), json!({"last_contact": null})))
            .collect();
        json!({
            "generation_id": 7,
            "members": members,
            "session_timeout_ms": 6000,
            "state": { state: { "leader": leader, "protocol_name": "cooperative-sticky", "protocol_type": "consumer" } },
        })
    }

    #[test]
    fn a_formed_group_led_by_a_departed_member_goes_back_to_forming_without_a_leader() {
        let mut detail = group("Formed", Some("gone"), &["alive"]);
        assert!(reset_group(&mut detail, false));
        assert_eq!(detail["state"]["Forming"]["leader"], Value::Null);
        assert_eq!(detail["state"]["Forming"]["protocol_name"], "cooperative-sticky");
        assert_eq!(detail["generation_id"], 8);
        assert!(detail["members"].get("alive").is_some(), "members are kept");
    }

    #[test]
    fn a_forming_group_led_by_a_departed_member_loses_its_leader() {
        let mut detail = group("Forming", Some("gone"), &[]);
        assert!(reset_group(&mut detail, false));
        assert_eq!(detail["state"]["Forming"]["leader"], Value::Null);
    }

    #[test]
    fn a_group_led_by_one_of_its_members_is_left_alone_unless_forced() {
        let mut detail = group("Formed", Some("alive"), &["alive"]);
        let before = detail.clone();
        assert!(!reset_group(&mut detail, false));
        assert_eq!(detail, before);
        assert!(reset_group(&mut detail, true));
        assert_eq!(detail["generation_id"], 8);
    }

    #[test]
    fn a_group_without_a_leader_is_left_alone() {
        let mut detail = group("Forming", None, &["alive"]);
        assert!(!reset_group(&mut detail, false));
    }
}

// Applies users.json: custom roles first, then users with their roles and
// passwords (created when missing, updated otherwise, so re-running it
// changes nothing that is already right and rotates passwords that were
// changed in their Secrets). Run by init.sh through the replica set, on the
// primary.
const fs = require("fs");
const spec = JSON.parse(fs.readFileSync("/scripts/users.json", "utf8"));
const secretOf = (u) => fs.readFileSync(u.passwordFile, "utf8").trim();
for (const r of spec.roles) {
  const rdb = db.getSiblingDB(r.db);
  if (rdb.getRole(r.role) === null) {
    rdb.createRole({ role: r.role, privileges: r.privileges, roles: r.roles });
    print(`role ${r.role}@${r.db} created`);
  } else {
    rdb.updateRole(r.role, { privileges: r.privileges, roles: r.roles });
    print(`role ${r.role}@${r.db} updated`);
  }
}
for (const u of spec.users) {
  const udb = db.getSiblingDB(u.db);
  if (udb.getUser(u.user) === null) {
    udb.createUser({ user: u.user, pwd: secretOf(u), roles: u.roles });
    print(`user ${u.user}@${u.db} created`);
  } else {
    udb.updateUser(u.user, { pwd: secretOf(u), roles: u.roles });
    print(`user ${u.user}@${u.db} updated`);
  }
}
// Before #25 Arca's user lived in the arca database with readWrite there;
// it is replaced by arca@admin (role arcaApp) and removed.
if (db.getSiblingDB("arca").getUser("arca") !== null) {
  db.getSiblingDB("arca").dropUser("arca");
  print("legacy user arca@arca dropped");
}

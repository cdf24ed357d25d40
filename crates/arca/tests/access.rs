//! Access rules and tenant segregation over HTTP: the full matrix of roles
//! x actions x documents (own, another user's public, another user's
//! private, another tenant's) x routes; a randomized run of two tenants and
//! several users where no response may ever hold a document outside the
//! caller's tenant and read scope; claim injection; rule changes taking
//! effect on the next request; and the explain endpoint. Files are in both
//! the matrix (every route, every kind of caller, own / another user's /
//! another tenant's file) and the randomized run.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};

const URL: &str = "/v1/collections/notes/documents";

/// Owner-only writes, readable by the owner or when public; deleting also
/// needs `status: "draft"`.
fn rules() -> Value {
    json!({
        "schema": {"type": "object", "properties": {"text": {"type": "string"}, "public": {"type": "boolean"},
                   "status": {"enum": ["draft", "final"]}}},
        "access": {
            "read": {"roles": ["*"], "filter": {"$or": [{"_owner": {"$claim": "sub"}}, {"public": true}]}},
            "create": {"roles": ["editor"]},
            "update": {"roles": ["editor"], "filter": {"_owner": {"$claim": "sub"}}},
            "delete": {"roles": ["editor"], "filter": {"_owner": {"$claim": "sub"}, "status": "draft"}}
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    NoRole,
    Viewer,
    Editor,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Doc {
    Own,
    OthersPublic,
    OthersPrivate,
    OtherTenant,
}

/// The contract's "who gets what", written from the rules above.
fn expected(who: Who, doc: Doc, op: &str) -> u16 {
    let write = matches!(op, "put" | "patch" | "delete");
    if who == Who::Anonymous {
        return 401; // no action of `notes` is public
    }
    let admin = who == Who::Admin;
    let readable = match doc {
        Doc::OtherTenant => false,
        Doc::Own => true,
        Doc::OthersPublic => true,
        Doc::OthersPrivate => admin,
    };
    if !write {
        return if readable { 200 } else { 404 };
    }
    // Writes: role first, then read scope, then the action's filter.
    if !(admin || who == Who::Editor) {
        return 403;
    }
    if !readable {
        return 404;
    }
    let in_filter = admin || doc == Doc::Own; // own docs are created as drafts
    match (in_filter, op) {
        (false, _) => 403,
        (true, "delete") => 204,
        (true, _) => 200,
    }
}

struct World {
    s: Server,
    tokens: HashMap<&'static str, String>,
}

async fn world() -> World {
    let s = Server::dev();
    let admin = s.token("root", &["admin"], Some("t1"));
    define(&s, &admin, "notes", rules()).await;
    let mut tokens = HashMap::new();
    tokens.insert("me", s.token("me", &["editor"], Some("t1")));
    tokens.insert("viewer", s.token("me", &["viewer"], Some("t1")));
    tokens.insert("norole", s.token("me", &[], Some("t1")));
    tokens.insert("admin", admin);
    tokens.insert("other", s.token("other", &["editor"], Some("t1")));
    tokens.insert("stranger", s.token("me", &["editor"], Some("t2")));
    World { s, tokens }
}

impl World {
    fn t(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    async fn create(&self, who: &str, body: Value) -> Value {
        let r = client()
            .post(self.s.url(URL))
            .bearer_auth(self.t(who))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.expect("json")
    }

    /// Fresh documents of each kind, so writes in one cell never affect another.
    async fn docs(&self) -> HashMap<&'static str, String> {
        let mut ids = HashMap::new();
        let own = self
            .create("me", json!({"text": "mine", "status": "draft"}))
            .await;
        ids.insert("own", own["_id"].as_str().expect("id").to_owned());
        let p = self
            .create(
                "other",
                json!({"text": "theirs", "public": true, "status": "draft"}),
            )
            .await;
        ids.insert("public", p["_id"].as_str().expect("id").to_owned());
        let q = self
            .create("other", json!({"text": "secret", "status": "draft"}))
            .await;
        ids.insert("private", q["_id"].as_str().expect("id").to_owned());
        let t = self
            .create(
                "stranger",
                json!({"text": "elsewhere", "public": true, "status": "draft"}),
            )
            .await;
        ids.insert("tenant", t["_id"].as_str().expect("id").to_owned());
        ids
    }

    async fn call(&self, who: Option<&str>, op: &str, id: &str) -> (u16, Value) {
        let url = self.s.url(&format!("{URL}/{id}"));
        let c = client();
        let mut req = match op {
            "get" => c.get(&url),
            "put" => c
                .put(&url)
                .json(&json!({"text": "replaced", "status": "draft"})),
            "patch" => c.patch(&url).json(&json!({"text": "patched"})),
            "delete" => c.delete(&url),
            _ => unreachable!(),
        };
        if let Some(w) = who {
            req = req.bearer_auth(self.t(w));
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn listed(&self, who: Option<&str>) -> (u16, Vec<String>, Option<u64>) {
        let mut req = client().get(self.s.url(&format!("{URL}?limit=1000")));
        let mut creq = client().get(self.s.url("/v1/collections/notes/count"));
        if let Some(w) = who {
            req = req.bearer_auth(self.t(w));
            creq = creq.bearer_auth(self.t(w));
        }
        let r = req.send().await.expect("list");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let ids = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let c: Value = creq
            .send()
            .await
            .expect("count")
            .json()
            .await
            .unwrap_or(Value::Null);
        (status, ids, c["count"].as_u64())
    }
}

#[tokio::test]
async fn the_access_matrix_gives_the_contract_status_in_every_cell() {
    let w = world().await;
    let whos = [
        (Who::Anonymous, None),
        (Who::NoRole, Some("norole")),
        (Who::Viewer, Some("viewer")),
        (Who::Editor, Some("me")),
        (Who::Admin, Some("admin")),
    ];
    let kinds = [
        ("own", Doc::Own),
        ("public", Doc::OthersPublic),
        ("private", Doc::OthersPrivate),
        ("tenant", Doc::OtherTenant),
    ];
    let mut wrong = Vec::new();
    for (who, token) in whos {
        for (key, kind) in kinds {
            for op in ["get", "put", "patch", "delete"] {
                let ids = w.docs().await;
                let (status, body) = w.call(token, op, &ids[key]).await;
                let want = expected(who, kind, op);
                if status != want {
                    wrong.push(format!(
                        "{who:?} {op} {kind:?}: got {status}, want {want} ({body})"
                    ));
                }
            }
            // List and count: the document is present exactly when readable.
            let ids = w.docs().await;
            let (status, listed, count) = w.listed(token).await;
            if who == Who::Anonymous {
                if status != 401 {
                    wrong.push(format!("{who:?} list: got {status}, want 401"));
                }
                continue;
            }
            let visible = expected(who, kind, "get") == 200;
            if listed.contains(&ids[key]) != visible {
                wrong.push(format!(
                    "{who:?} list {kind:?}: present={}, want {visible}",
                    !visible
                ));
            }
            if count != Some(listed.len() as u64) {
                wrong.push(format!(
                    "{who:?} count {count:?} != listed {}",
                    listed.len()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The files routes' "who gets what": any caller with a token reads the
/// files of its tenant (roles do not matter), only the owner or an admin
/// deletes, another tenant's file is 404, no token is 401.
fn expected_file(who: Who, owner: &str, tenant: &str, op: &str) -> u16 {
    if who == Who::Anonymous {
        return 401;
    }
    if tenant != "t1" {
        return 404;
    }
    match op {
        "delete" if who == Who::Admin || owner == "me" => 204,
        "delete" => 403,
        "link" => 201,
        _ => 200,
    }
}

/// A tiny PNG (2 x 2), for thumbnails.
fn tiny_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(2, 2))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

#[tokio::test]
async fn the_files_matrix_gives_the_contract_status_in_every_cell() {
    let w = world().await;
    let whos = [
        (Who::Anonymous, None),
        (Who::NoRole, Some("norole")),
        (Who::Viewer, Some("viewer")),
        (Who::Editor, Some("me")),
        (Who::Admin, Some("admin")),
    ];
    // (uploader, its sub, its tenant)
    let kinds = [
        ("me", "me", "t1"),
        ("other", "other", "t1"),
        ("stranger", "me", "t2"),
    ];
    let mut wrong = Vec::new();
    for (who, token) in whos {
        for (uploader, owner, tenant) in kinds {
            for op in ["get", "metadata", "thumbnail", "link", "delete"] {
                let r = client()
                    .post(w.s.url("/v1/files"))
                    .bearer_auth(w.t(uploader))
                    .body(tiny_png())
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(r.status(), 201);
                let meta: Value = r.json().await.expect("json");
                let id = meta["id"].as_str().expect("id");
                let url = w.s.url(&match op {
                    "get" | "delete" => format!("/v1/files/{id}"),
                    "link" => format!("/v1/files/{id}/links"),
                    other => format!("/v1/files/{id}/{other}"),
                });
                let c = client();
                let mut req = match op {
                    "delete" => c.delete(&url),
                    "link" => c.post(&url),
                    _ => c.get(&url),
                };
                if let Some(t) = token {
                    req = req.bearer_auth(w.t(t));
                }
                let status = req.send().await.expect("request").status().as_u16();
                let want = expected_file(who, owner, tenant, op);
                if status != want {
                    wrong.push(format!(
                        "{who:?} {op} a file of {uploader}: got {status}, want {want}"
                    ));
                }
            }
        }
    }
    // An upload without a token is 401; with any token of any role, 201.
    let r = client()
        .post(w.s.url("/v1/files"))
        .body("x")
        .send()
        .await
        .expect("upload");
    if r.status() != 401 {
        wrong.push(format!("anonymous upload: got {}", r.status()));
    }
    for t in ["norole", "viewer", "me", "admin", "stranger"] {
        let r = client()
            .post(w.s.url("/v1/files"))
            .bearer_auth(w.t(t))
            .body("x")
            .send()
            .await
            .expect("upload");
        if r.status() != 201 {
            wrong.push(format!("{t} upload: got {}", r.status()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Without a token, a collection that does not exist answers like one that
/// exists and is not public (401), so anonymous callers cannot list names
/// by probing; a public one answers; with a token, a missing one is 404.
#[tokio::test]
async fn anonymous_callers_cannot_tell_missing_collections_from_closed_ones() {
    let s = Server::dev();
    let admin = s.admin();
    define(
        &s,
        &admin,
        "closed",
        json!({"schema": {"type": "object"},
        "access": {"read": {"roles": ["*"]}}}),
    )
    .await;
    define(
        &s,
        &admin,
        "open",
        json!({"schema": {"type": "object"},
        "access": {"read": {"roles": ["public"]}}}),
    )
    .await;
    let anonymous = |path: &str| client().get(s.url(path)).send();
    for path in [
        "/v1/collections/closed/documents",
        "/v1/collections/missing/documents",
        "/v1/collections/Not-A-Name/documents",
        "/v1/collections/missing/documents/x1",
        "/v1/collections/missing/count",
        "/v1/collections/missing/events",
        "/v1/collections/missing/events?ticket=abc",
    ] {
        let r = anonymous(path).await.expect("get");
        assert_eq!(r.status(), 401, "{path}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .expect("text")
                .starts_with("Bearer"),
            "{path}"
        );
    }
    let r = client()
        .post(s.url("/v1/collections/missing/aggregate"))
        .json(&json!({"pipeline": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(
        anonymous("/v1/collections/open/documents")
            .await
            .expect("get")
            .status(),
        200
    );
    let t = s.token("ana", &[], None);
    let r = client()
        .get(s.url("/v1/collections/missing/documents"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    // A refused token is 401 too, as before.
    let r = client()
        .get(s.url("/v1/collections/missing/documents"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn create_must_match_the_create_filter_and_results_must_stay_in_the_update_filter() {
    let s = Server::dev();
    let admin = s.admin();
    define(
        &s,
        &admin,
        "tasks",
        json!({"access": {
            "read": {"roles": ["*"]},
            "create": {"roles": ["*"], "filter": {"team": {"$claim": "team"}}},
            "update": {"roles": ["*"], "filter": {"team": {"$claim": "team"}, "locked": {"$ne": true}}}
        }}),
    )
    .await;
    // A token with a `team` claim, minted with `arca token --claim`.
    let red = s.token_with_claims("u", &["member"], None, &["team=red"]);
    let url = s.url("/v1/collections/tasks/documents");
    let r = client()
        .post(&url)
        .bearer_auth(&red)
        .json(&json!({"_id": "t1", "team": "red"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let r = client()
        .post(&url)
        .bearer_auth(&red)
        .json(&json!({"_id": "t2", "team": "blue"}))
        .send()
        .await
        .expect("post");
    problem(r, 403).await;
    // Moving the document out of the update filter is refused...
    let r = client()
        .patch(format!("{url}/t1"))
        .bearer_auth(&red)
        .json(&json!({"team": "blue"}))
        .send()
        .await
        .expect("patch");
    problem(r, 403).await;
    let r = client()
        .patch(format!("{url}/t1"))
        .bearer_auth(&red)
        .json(&json!({"locked": true}))
        .send()
        .await
        .expect("patch");
    problem(r, 403).await;
    // ...and nothing changed.
    let doc: Value = client()
        .get(format!("{url}/t1"))
        .bearer_auth(&red)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("j");
    assert_eq!(
        (doc["team"].clone(), doc["_rev"].clone()),
        (json!("red"), json!(1))
    );
    // A token without the claim matches nothing: no create, never everything.
    let plain = s.token("v", &["member"], None);
    let r = client()
        .post(&url)
        .bearer_auth(&plain)
        .json(&json!({"team": null}))
        .send()
        .await
        .expect("post");
    problem(r, 403).await;
}

#[tokio::test]
async fn claims_that_look_like_operators_are_matched_as_plain_values() {
    let s = Server::dev();
    let admin = s.admin();
    define(
        &s,
        &admin,
        "docs",
        json!({"access": {"read": {"roles": ["*"], "filter": {"team": {"$claim": "team"}}},
                          "create": {"roles": ["admin"]}}}),
    )
    .await;
    let url = s.url("/v1/collections/docs/documents");
    for team in ["red", "blue"] {
        let r = client()
            .post(&url)
            .bearer_auth(&admin)
            .json(&json!({"team": team}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    let mint = |claim: &str| s.token_with_claims("x", &["member"], None, &[claim]);
    for claim in [
        r#"team={"$ne": null}"#,
        r#"team={"$exists": true}"#,
        r#"team={"$in": ["red", "blue"]}"#,
        r#"team={"$gt": ""}"#,
        r#"team={"$ne": "x"}"#,
        "team=$ne",
    ] {
        let t = mint(claim);
        let v: Value = client()
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(v["items"], json!([]), "{claim} must not widen the rule");
    }
    let t = mint("team=red");
    let v: Value = client()
        .get(&url)
        .bearer_auth(&t)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn rule_changes_apply_to_the_next_request() {
    let w = world().await;
    let ids = w.docs().await;
    assert_eq!(w.call(Some("me"), "get", &ids["private"]).await.0, 404);
    let mut open = rules();
    open["access"]["read"] = json!({"roles": ["*"]});
    define(&w.s, w.t("admin"), "notes", open).await;
    assert_eq!(w.call(Some("me"), "get", &ids["private"]).await.0, 200);
    // Still never across tenants.
    assert_eq!(w.call(Some("me"), "get", &ids["tenant"]).await.0, 404);
}

/// A tiny deterministic generator (xorshift) so the randomized run is
/// reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[tokio::test]
async fn randomized_operations_never_leak_across_tenants_or_read_scopes() {
    let s = Server::dev();
    let admin = s.token("root", &["admin"], Some("t1"));
    define(&s, &admin, "notes", rules()).await;
    // (sub, tenant) -> token; several users in two tenants, plus admins.
    let users: Vec<(&str, &str, bool)> = vec![
        ("ana", "t1", false),
        ("bia", "t1", false),
        ("ana", "t2", false),
        ("caio", "t2", false),
        ("root", "t1", true),
        ("boss", "t2", true),
    ];
    let tokens: Vec<String> = users
        .iter()
        .map(|(sub, t, admin)| s.token(sub, if *admin { &["admin"] } else { &["editor"] }, Some(t)))
        .collect();
    // Ground truth: id -> (tenant, owner, public).
    let mut truth: HashMap<String, (String, String, bool)> = HashMap::new();
    // Files: id -> (tenant, owner, bytes).
    let mut files: HashMap<String, (String, String, Vec<u8>)> = HashMap::new();
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let url = s.url(URL);
    let visible = |truth: &HashMap<String, (String, String, bool)>, u: usize, id: &str| -> bool {
        let (sub, tenant, admin) = users[u];
        truth
            .get(id)
            .is_some_and(|(t, o, p)| t == tenant && (admin || o == sub || *p))
    };
    for step in 0..400 {
        let u = (rng.next() % users.len() as u64) as usize;
        let t = &tokens[u];
        let ids: Vec<String> = truth.keys().cloned().collect();
        let file_ids: Vec<String> = {
            let mut f: Vec<String> = files.keys().cloned().collect();
            f.sort();
            f
        };
        match rng.next() % 9 {
            6 => {
                let bytes = format!("{step} by {:?}", users[u]).into_bytes();
                let r = client()
                    .post(s.url("/v1/files"))
                    .bearer_auth(t)
                    .body(bytes.clone())
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(r.status(), 201);
                let m: Value = r.json().await.expect("json");
                files.insert(
                    m["id"].as_str().expect("id").to_owned(),
                    (users[u].1.to_owned(), users[u].0.to_owned(), bytes),
                );
            }
            7 if !file_ids.is_empty() => {
                let id = rng.pick(&file_ids).clone();
                let r = client()
                    .get(s.url(&format!("/v1/files/{id}")))
                    .bearer_auth(t)
                    .send()
                    .await
                    .expect("get file");
                let status = r.status().as_u16();
                let (tenant, _, bytes) = &files[&id];
                let same = tenant == users[u].1;
                assert_eq!(
                    status,
                    if same { 200 } else { 404 },
                    "step {step}: file {id} by {:?}",
                    users[u]
                );
                if same {
                    assert_eq!(&r.bytes().await.expect("b")[..], &bytes[..]);
                }
            }
            8 if !file_ids.is_empty() => {
                let id = rng.pick(&file_ids).clone();
                let r = client()
                    .delete(s.url(&format!("/v1/files/{id}")))
                    .bearer_auth(t)
                    .send()
                    .await
                    .expect("delete file");
                let status = r.status().as_u16();
                let (tenant, owner, _) = &files[&id];
                let want = if tenant != users[u].1 {
                    404
                } else if users[u].2 || owner == users[u].0 {
                    204
                } else {
                    403
                };
                assert_eq!(
                    status, want,
                    "step {step}: delete file {id} by {:?}",
                    users[u]
                );
                if status == 204 {
                    files.remove(&id);
                }
            }
            0 | 1 => {
                let public = rng.next().is_multiple_of(2);
                let r = client()
                    .post(&url)
                    .bearer_auth(t)
                    .json(&json!({"public": public, "status": "draft"}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                let d: Value = r.json().await.expect("json");
                truth.insert(
                    d["_id"].as_str().expect("id").to_owned(),
                    (users[u].1.to_owned(), users[u].0.to_owned(), public),
                );
            }
            2 if !ids.is_empty() => {
                let id = rng.pick(&ids).clone();
                let r = client()
                    .get(format!("{url}/{id}"))
                    .bearer_auth(t)
                    .send()
                    .await
                    .expect("get");
                let status = r.status().as_u16();
                assert_eq!(
                    status == 200,
                    visible(&truth, u, &id),
                    "step {step}: get {id} by {:?} -> {status}",
                    users[u]
                );
                if status == 200 {
                    let d: Value = r.json().await.expect("json");
                    assert!(d.get("_tenant").is_none() && d.get("tenant").is_none());
                }
            }
            3 if !ids.is_empty() => {
                let id = rng.pick(&ids).clone();
                let public = rng.next().is_multiple_of(2);
                let r = client()
                    .patch(format!("{url}/{id}"))
                    .bearer_auth(t)
                    .json(&json!({"public": public}))
                    .send()
                    .await
                    .expect("patch");
                let status = r.status().as_u16();
                let may = visible(&truth, u, &id) && (users[u].2 || truth[&id].1 == users[u].0);
                assert_eq!(
                    status == 200,
                    may,
                    "step {step}: patch {id} by {:?} -> {status}",
                    users[u]
                );
                if status == 200 {
                    if let Some(e) = truth.get_mut(&id) {
                        e.2 = public;
                    }
                } else {
                    assert!(status == 403 || status == 404, "step {step}: {status}");
                    assert_eq!(
                        status == 404,
                        !visible(&truth, u, &id),
                        "404 exactly when unreadable"
                    );
                }
            }
            4 if !ids.is_empty() => {
                let id = rng.pick(&ids).clone();
                let r = client()
                    .delete(format!("{url}/{id}"))
                    .bearer_auth(t)
                    .send()
                    .await
                    .expect("delete");
                let status = r.status().as_u16();
                let may = visible(&truth, u, &id) && (users[u].2 || truth[&id].1 == users[u].0);
                assert_eq!(
                    status == 204,
                    may,
                    "step {step}: delete {id} by {:?} -> {status}",
                    users[u]
                );
                if status == 204 {
                    truth.remove(&id);
                }
            }
            _ => {
                let v: Value = client()
                    .get(format!("{url}?limit=1000"))
                    .bearer_auth(t)
                    .send()
                    .await
                    .expect("list")
                    .json()
                    .await
                    .expect("json");
                let got: HashSet<String> = v["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .filter_map(|d| d["_id"].as_str().map(str::to_owned))
                    .collect();
                let want: HashSet<String> = truth
                    .keys()
                    .filter(|id| visible(&truth, u, id))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "step {step}: list by {:?}", users[u]);
            }
        }
    }
    assert!(truth.len() > 10, "the run created documents");
    assert!(!files.is_empty(), "the run uploaded files");
}

#[tokio::test]
async fn explain_reports_the_decision_reason_and_effective_filter() {
    let w = world().await;
    let explain = |who: Option<&str>, body: Value| {
        let mut req = client()
            .post(w.s.url("/v1/collections/notes/access/explain"))
            .json(&body);
        if let Some(t) = who {
            req = req.bearer_auth(w.t(t).to_owned());
        }
        async move {
            let r = req.send().await.expect("explain");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // The rules are the schema admins' business: others get 403, callers
    // without a token 401.
    assert_eq!(
        explain(Some("me"), json!({"action": "update"})).await.0,
        403
    );
    assert_eq!(explain(None, json!({"action": "read"})).await.0, 401);
    // An admin explains for a given identity's claims.
    let me = json!({"sub": "me", "roles": ["editor"], "tid": "t1"});
    let (status, v) = explain(Some("admin"), json!({"action": "update", "claims": me})).await;
    assert_eq!(status, 200);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["identity"]["sub"], "me");
    assert_eq!(v["scope"]["filter"], json!({"_owner": {"$literal": "me"}}));
    assert_eq!(
        v["read_scope"]["filter"]["$or"][0],
        json!({"_owner": {"$literal": "me"}})
    );
    let viewer = json!({"sub": "me", "roles": ["viewer"], "tid": "t1"});
    let (_, v) = explain(Some("admin"), json!({"action": "delete", "claims": viewer})).await;
    assert_eq!(
        (v["allowed"].clone(), v["status"].clone()),
        (json!(false), json!(403))
    );
    assert!(
        v["reason"].as_str().expect("reason").contains("roles"),
        "{v}"
    );
    // A missing claim matches nothing.
    let (_, v) = explain(
        Some("admin"),
        json!({"action": "update", "claims": {"roles": ["editor"], "tid": "t1"}}),
    )
    .await;
    assert_eq!(v["allowed"], true);
    assert_eq!(v["scope"]["matches_nothing"], true, "{v}");
    let (_, v) = explain(Some("admin"), json!({"action": "read"})).await;
    assert!(v["reason"].as_str().expect("reason").contains("admin"));
    // Bad bodies are 400.
    assert_eq!(
        explain(Some("admin"), json!({"action": "fly"})).await.0,
        400
    );
    assert_eq!(
        explain(Some("admin"), json!({"action": "read", "x": 1}))
            .await
            .0,
        400
    );
}

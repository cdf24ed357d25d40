//! Black-box tests of the query parameters of list and count: filters,
//! sort, projections, limits and cursors over HTTP.

mod common;
use common::*;

const URL: &str = "/v1/collections/books/documents";

async fn setup() -> (Server, String) {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "books",
        json!({
            "indexes": [{"fields": {"year": 1}}, {"fields": {"author.name": 1}}],
            "access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}
        }),
    )
    .await;
    let books = [
        json!({"_id": "b1", "title": "Dune", "year": 1965, "tags": ["sf", "classic"], "author": {"name": "Herbert"}}),
        json!({"_id": "b2", "title": "Neuromancer", "year": 1984, "tags": ["sf", "cyberpunk"], "author": {"name": "Gibson"}}),
        json!({"_id": "b3", "title": "Emma", "year": 1815, "tags": ["classic"], "author": {"name": "Austen"}}),
        json!({"_id": "b4", "title": "Count Zero", "year": 1986, "tags": ["sf"], "author": {"name": "Gibson"}}),
        json!({"_id": "b5", "title": "Untitled", "year": "unknown"}),
    ];
    for b in books {
        let r = client()
            .post(s.url(URL))
            .bearer_auth(&t)
            .json(&b)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    (s, t)
}

fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn list(s: &Server, t: &str, query: &str) -> reqwest::Response {
    s.get(&format!("{URL}?{query}"), t).await
}

async fn ids(s: &Server, t: &str, query: &str) -> Vec<String> {
    let r = list(s, t, query).await;
    assert_eq!(r.status(), 200, "{query}");
    let v: Value = r.json().await.expect("json");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn filters_select_documents_with_mongodb_semantics() {
    let (s, t) = setup().await;
    let f = |v: Value| format!("filter={}", enc(&v.to_string()));
    assert_eq!(
        ids(&s, &t, &f(json!({"author.name": "Gibson"}))).await,
        ["b2", "b4"]
    );
    assert_eq!(
        ids(&s, &t, &f(json!({"year": {"$gte": 1970}}))).await,
        ["b2", "b4"],
        "numbers only, never the string"
    );
    assert_eq!(
        ids(&s, &t, &f(json!({"tags": "classic"}))).await,
        ["b1", "b3"]
    );
    assert_eq!(
        ids(&s, &t, &f(json!({"tags": {"$all": ["sf", "classic"]}}))).await,
        ["b1"]
    );
    assert_eq!(ids(&s, &t, &f(json!({"$or": [{"year": {"$lt": 1900}}, {"title": {"$regex": "^count", "$options": "i"}}]}))).await, ["b3", "b4"]);
    assert_eq!(
        ids(&s, &t, &f(json!({"tags": {"$exists": false}}))).await,
        ["b5"]
    );
    assert_eq!(
        ids(
            &s,
            &t,
            &f(json!({"_owner": "admin-user", "_rev": 1, "_id": {"$in": ["b1", "b9"]}}))
        )
        .await,
        ["b1"]
    );
    let n: Value = client()
        .get(s.url(&format!(
            "/v1/collections/books/count?{}",
            f(json!({"tags": "sf"}))
        )))
        .bearer_auth(&t)
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    assert_eq!(n, json!({"count": 3}));
}

#[tokio::test]
async fn invalid_filters_are_400_naming_the_problem() {
    let (s, t) = setup().await;
    for (filter, needle) in [
        ("{\"$where\": \"1\"}", "$where"),
        ("{\"a\": {\"$expr\": 1}}", "$expr"),
        ("{\"a\": {\"$function\": {}}}", "$function"),
        ("{\"a\": {\"$regex\": \"(?<=x)\"}}", "lookaround"),
        ("{not json", "JSON"),
        ("[1]", "object"),
    ] {
        let r = list(&s, &t, &format!("filter={}", enc(filter))).await;
        let p = problem(r, 400).await;
        assert!(
            p["detail"].as_str().expect("detail").contains(needle),
            "{filter}: {p}"
        );
        let r = client()
            .get(s.url(&format!(
                "/v1/collections/books/count?filter={}",
                enc(filter)
            )))
            .bearer_auth(&t)
            .send()
            .await
            .expect("count");
        problem(r, 400).await;
    }
    for bad in [
        "sort=a,,b",
        "sort=%24x",
        "fields=a,a.b",
        "limit=1001",
        "limit=0",
        "filter=%7B%7D&filter=%7B%7D",
    ] {
        problem(list(&s, &t, bad).await, 400).await;
    }
    // Every parameter is single: a repeated one is refused, not resolved
    // by picking one of the two.
    for (query, name) in [
        ("limit=1&limit=1000", "limit"),
        ("sort=year&sort=-year", "sort"),
        ("fields=title&fields=year", "fields"),
    ] {
        let p = problem(list(&s, &t, query).await, 400).await;
        assert_eq!(
            p["detail"],
            format!("the `{name}` parameter is given twice")
        );
    }
    // Bytes that do not decode to UTF-8 are refused wherever they are,
    // instead of becoming U+FFFD: a sort on a field nobody has, or a
    // filter value the client never sent.
    let title_ff = format!("filter={}%FF%22%7D", enc("{\"title\": \"Dune"));
    for query in ["sort=%FF", "fields=title%C3", &title_ff, "x%FF=1"] {
        let p = problem(list(&s, &t, query).await, 400).await;
        assert_eq!(
            p["detail"], "query parameters must be UTF-8 once percent-decoded",
            "{query}"
        );
        let count = format!("/v1/collections/books/count?{query}");
        problem(s.get(&count, &t).await, 400).await;
    }
    // Encoded UTF-8, U+FFFD itself included, is fine.
    let r = list(
        &s,
        &t,
        &format!("filter={}", enc("{\"title\": \"\u{FFFD}é\"}")),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sort_orders_across_types_and_fields_project() {
    let (s, t) = setup().await;
    // Numbers before strings ascending (MongoDB's order); ties by _id.
    assert_eq!(
        ids(&s, &t, "sort=year").await,
        ["b3", "b1", "b2", "b4", "b5"]
    );
    assert_eq!(
        ids(&s, &t, "sort=-year").await,
        ["b5", "b4", "b2", "b1", "b3"]
    );
    assert_eq!(
        ids(&s, &t, "sort=author.name,-year").await,
        ["b5", "b3", "b4", "b2", "b1"]
    );
    let v: Value = list(&s, &t, "fields=title,author.name&sort=-_id&limit=1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["items"], json!([{"_id": "b5", "title": "Untitled"}]));
    let v: Value = list(&s, &t, "fields=author.name&limit=1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["items"],
        json!([{"_id": "b1", "author": {"name": "Herbert"}}])
    );
}

#[tokio::test]
async fn cursors_walk_a_sorted_filtered_listing_and_refuse_misuse() {
    let (s, t) = setup().await;
    let q = format!(
        "sort=-year&filter={}&limit=2",
        enc("{\"title\": {\"$ne\": \"x\"}}")
    );
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(c) => format!("{q}&after={c}"),
            None => q.clone(),
        };
        let v: Value = list(&s, &t, &url).await.json().await.expect("json");
        seen.extend(
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|d| d["_id"].as_str().expect("id").to_owned()),
        );
        match v["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["b5", "b4", "b2", "b1", "b3"]);
    // A cursor from this listing used with another sort or filter: 400.
    let v: Value = list(&s, &t, &q).await.json().await.expect("json");
    let cursor = v["next"].as_str().expect("next").to_owned();
    let p = problem(
        list(&s, &t, &format!("sort=year&limit=2&after={cursor}")).await,
        400,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .expect("d")
            .contains("another filter or sort"),
        "{p}"
    );
    problem(
        list(&s, &t, &format!("sort=-year&limit=2&after={cursor}")).await,
        400,
    )
    .await;
    // A tampered cursor: 400.
    let mut chars: Vec<char> = cursor.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    problem(list(&s, &t, &format!("{q}&after={tampered}")).await, 400).await;
}

//! The XML of S3's answers and of the one body we send (CompleteMultipartUpload), read and
//! written with a real XML parser (quick-xml): entities of every form are unescaped (`&quot;` as
//! S3 writes them, `&#34;` as Go servers such as SeaweedFS and MinIO do), namespaces and the XML
//! declaration are taken as they come, and our text is escaped.

use std::borrow::Cow;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

/// One element of a parsed document: its local name (no namespace prefix), its text (entities
/// resolved, CDATA included) and its child elements in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child element called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child element called `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Parses an XML document; returns its root element.
pub fn parse(body: &[u8]) -> Result<Element, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("XML is not UTF-8: {e}"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let bad = |e: &dyn std::fmt::Display| format!("malformed XML: {e}");
    loop {
        let event = reader.read_event().map_err(|e| bad(&e))?;
        match event {
            Event::Start(e) => stack.push(open(&e)),
            Event::Empty(e) => {
                let el = open(&e);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(bad(&"a second root element")),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| bad(&"unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(bad(&"a second root element")),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    let raw = t.into_inner();
                    cur.text.push_str(&raw);
                }
            }
            Event::GeneralRef(r) => {
                let Some(cur) = stack.last_mut() else {
                    continue;
                };
                match r.resolve_char_ref().map_err(|e| bad(&e))? {
                    Some(c) => cur.text.push(c),
                    None => {
                        let name: &str = &r;
                        let value = quick_xml::escape::resolve_predefined_entity(name)
                            .ok_or_else(|| bad(&format!("unknown entity &{name};")))?;
                        cur.text.push_str(value);
                    }
                }
            }
            Event::Eof => break,
            // Declaration, comments, processing instructions, doctype.
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad(&"the document ends inside an element"));
    }
    root.ok_or_else(|| bad(&"no root element"))
}

fn open(e: &BytesStart<'_>) -> Element {
    Element {
        name: e.local_name().as_ref().to_string(),
        ..Default::default()
    }
}

/// The `Code` and `Message` of an S3 `<Error>` document; None when `root` is no error.
pub fn error(root: &Element) -> Option<(String, String)> {
    (root.name == "Error").then(|| {
        (
            root.text_of("Code").unwrap_or_default().trim().to_string(),
            root.text_of("Message")
                .unwrap_or_default()
                .trim()
                .to_string(),
        )
    })
}

/// One page of ListMultipartUploads: the open uploads as (key, upload id), and the markers of
/// the next page when the answer is truncated: the key marker (None when the answer gave only
/// an upload id marker) and the upload id marker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UploadsPage {
    pub uploads: Vec<(String, String)>,
    pub next: Option<(Option<String>, String)>,
}

/// Reads a `ListMultipartUploadsResult`.
pub fn uploads_page(root: &Element) -> Result<UploadsPage, String> {
    if root.name != "ListMultipartUploadsResult" {
        return Err(format!(
            "expected ListMultipartUploadsResult, got <{}>",
            root.name
        ));
    }
    let mut page = UploadsPage::default();
    for u in root.children_named("Upload") {
        match (u.text_of("Key"), u.text_of("UploadId")) {
            (Some(k), Some(id)) => page.uploads.push((k.to_string(), id.trim().to_string())),
            _ => return Err("an Upload without Key or UploadId".into()),
        }
    }
    let truncated = root
        .text_of("IsTruncated")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("true"));
    if truncated {
        let key = root.text_of("NextKeyMarker").filter(|k| !k.is_empty());
        let id = root.text_of("NextUploadIdMarker").map(str::trim);
        page.next = match (key, id) {
            (Some(k), id) => Some((Some(k.to_string()), id.unwrap_or_default().to_string())),
            // S3 always names the next key; SeaweedFS names only the next upload id, and pages
            // by it alone.
            (None, Some(id)) if !id.is_empty() => Some((None, id.to_string())),
            // Without markers, the last upload of the page is where the next one starts.
            (None, _) => {
                let (k, id) = page
                    .uploads
                    .last()
                    .cloned()
                    .ok_or("a truncated listing without markers or uploads")?;
                Some((Some(k), id))
            }
        };
    }
    Ok(page)
}

/// The `UploadId` of an `InitiateMultipartUploadResult`.
pub fn upload_id(root: &Element) -> Result<String, String> {
    if root.name != "InitiateMultipartUploadResult" {
        return Err(format!(
            "expected InitiateMultipartUploadResult, got <{}>",
            root.name
        ));
    }
    match root.text_of("UploadId").map(str::trim) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err("no UploadId in the answer".into()),
    }
}

/// The ETag (quotes included, as S3 writes it) of a `CompleteMultipartUploadResult`.
pub fn completed_etag(root: &Element) -> Result<String, String> {
    if root.name != "CompleteMultipartUploadResult" {
        return Err(format!(
            "expected CompleteMultipartUploadResult, got <{}>",
            root.name
        ));
    }
    root.text_of("ETag")
        .map(str::to_string)
        .ok_or_else(|| "no ETag in the answer".into())
}

/// The body of CompleteMultipartUpload: each part's number and ETag (without quotes; they are
/// added), in the order given, text escaped.
pub fn complete_request<'a>(parts: impl IntoIterator<Item = (u32, &'a str)>) -> String {
    let mut w = quick_xml::Writer::new(Vec::new());
    let el = |w: &mut quick_xml::Writer<Vec<u8>>, name: &str, text: &str| {
        w.write_event(Event::Start(BytesStart::new(name))).ok();
        let escaped = quick_xml::escape::partial_escape(text);
        w.write_event(Event::Text(BytesText::from_escaped(escaped)))
            .ok();
        w.write_event(Event::End(BytesEnd::new(name))).ok();
    };
    let root = BytesStart::new("CompleteMultipartUpload")
        .with_attributes([("xmlns", "http://s3.amazonaws.com/doc/2006-03-01/")]);
    w.write_event(Event::Start(root)).ok();
    for (number, etag) in parts {
        w.write_event(Event::Start(BytesStart::new("Part"))).ok();
        el(&mut w, "PartNumber", &number.to_string());
        el(&mut w, "ETag", &format!("\"{etag}\""));
        w.write_event(Event::End(BytesEnd::new("Part"))).ok();
    }
    w.write_event(Event::End(BytesEnd::new("CompleteMultipartUpload")))
        .ok();
    let bytes = w.into_inner();
    match String::from_utf8_lossy(&bytes) {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_escapes_of_an_etag_read_the_same() {
        // As AWS writes it, and as Go servers (SeaweedFS) do.
        for body in [
            r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>http://h/b/k</Location><Bucket>b</Bucket><Key>a &amp; b.bin</Key><ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag></CompleteMultipartUploadResult>"#,
            "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>http://h/b/k</Location><Bucket>b</Bucket><Key>a &amp; b.bin</Key><ETag>&#34;3858f62230ac3c915f300c664312c11f-9&#34;</ETag></CompleteMultipartUploadResult>",
            // Whitespace S3 sends while it works, before the document.
            "\n   \n<CompleteMultipartUploadResult><ETag>&#x22;3858f62230ac3c915f300c664312c11f-9&#x22;</ETag></CompleteMultipartUploadResult>",
        ] {
            let root = parse(body.as_bytes()).unwrap();
            assert_eq!(
                completed_etag(&root).unwrap(),
                "\"3858f62230ac3c915f300c664312c11f-9\""
            );
        }
        let root = parse(b"<CompleteMultipartUploadResult><Key>a &amp; b.bin</Key><ETag>x</ETag></CompleteMultipartUploadResult>").unwrap();
        assert_eq!(root.text_of("Key"), Some("a & b.bin"));
    }

    #[test]
    fn initiate_answers_give_the_upload_id_unescaped() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket><Key>p/big file.bin</Key>
  <UploadId>VXBsb2FkIElE&#43;Zm9y&amp;x</UploadId>
</InitiateMultipartUploadResult>"#;
        let root = parse(body.as_bytes()).unwrap();
        assert_eq!(upload_id(&root).unwrap(), "VXBsb2FkIElE+Zm9y&x");
        let empty = parse(b"<InitiateMultipartUploadResult/>").unwrap();
        assert!(upload_id(&empty).is_err());
        let other = parse(b"<Other><UploadId>x</UploadId></Other>").unwrap();
        assert!(upload_id(&other).is_err());
    }

    #[test]
    fn listings_are_paged_by_their_markers() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/&#34;q&#34; &amp; r.bin</NextKeyMarker>
  <NextUploadIdMarker>id-2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a.bin</Key><UploadId>id-1</UploadId><Initiator><ID>x</ID></Initiator></Upload>
  <Upload><Key>p/&#34;q&#34; &amp; r.bin</Key><UploadId>id-2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = uploads_page(&parse(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            page.uploads,
            vec![
                ("p/a.bin".to_string(), "id-1".to_string()),
                ("p/\"q\" & r.bin".to_string(), "id-2".to_string())
            ]
        );
        assert_eq!(
            page.next,
            Some((Some("p/\"q\" & r.bin".to_string()), "id-2".to_string()))
        );
        // As SeaweedFS answers: the next upload id only.
        let weed = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><KeyMarker></KeyMarker><NextUploadIdMarker>h_2</NextUploadIdMarker><Upload><Key>p/&#34;q&#34; &amp; &lt;a&gt;.bin</Key><UploadId>h_2</UploadId></Upload></ListMultipartUploadsResult>";
        let page = uploads_page(&parse(weed.as_bytes()).unwrap()).unwrap();
        assert_eq!(page.uploads[0].0, "p/\"q\" & <a>.bin");
        assert_eq!(page.next, Some((None, "h_2".to_string())));
        let last = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>";
        let page = uploads_page(&parse(last.as_bytes()).unwrap()).unwrap();
        assert_eq!(page, UploadsPage::default());
    }

    #[test]
    fn error_documents_give_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate &amp; retry.</Message><RequestId>1</RequestId></Error>"#;
        let root = parse(body.as_bytes()).unwrap();
        assert_eq!(
            error(&root),
            Some((
                "SlowDown".to_string(),
                "Please reduce your request rate & retry.".to_string()
            ))
        );
        assert_eq!(error(&parse(b"<Other/>").unwrap()), None);
    }

    #[test]
    fn malformed_documents_are_refused() {
        for body in [
            &b"<A><B></A>"[..],
            b"<A>",
            b"",
            b"<A>&nosuch;</A>",
            b"<A/><B/>",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_completion_request_is_escaped_and_reads_back() {
        let xml = complete_request([(1, "e1"), (2, "a<b&c")]);
        assert!(xml.starts_with("<CompleteMultipartUpload"), "{xml}");
        let root = parse(xml.as_bytes()).unwrap();
        let parts: Vec<(String, String)> = root
            .children_named("Part")
            .map(|p| {
                (
                    p.text_of("PartNumber").unwrap().to_string(),
                    p.text_of("ETag").unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            vec![
                ("1".to_string(), "\"e1\"".to_string()),
                ("2".to_string(), "\"a<b&c\"".to_string())
            ]
        );
    }
}

//! The chat page: `assets/index.html` with `assets/style.css` and `assets/app.js` put inline,
//! so the page is one self-contained document (nothing fetched from anywhere, saved as one file).

use std::sync::LazyLock;

const HTML: &str = include_str!("assets/index.html");
const CSS: &str = include_str!("assets/style.css");
const JS: &str = include_str!("assets/app.js");

static PAGE: LazyLock<String> = LazyLock::new(|| {
    let page = HTML.replacen("/*STYLE*/", CSS, 1).replacen("/*SCRIPT*/", JS, 1);
    debug_assert!(
        page.len() == HTML.len() - "/*STYLE*//*SCRIPT*/".len() + CSS.len() + JS.len(),
        "both placeholders present once"
    );
    page
});

pub fn page() -> &'static str {
    &PAGE
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_self_contained() {
        let p = super::page();
        assert!(p.contains("<style>") && p.contains("<script>"));
        assert!(!p.contains("/*STYLE*/") && !p.contains("/*SCRIPT*/"));
        // no external resource: no http(s) URL in src/href attributes, no @import
        for bad in ["src=\"http", "href=\"http", "@import", "src=\"//", "href=\"//"] {
            assert!(!p.contains(bad), "page references an outside resource: {bad}");
        }
        assert!(p.contains("name=\"viewport\""), "phone-sized screens need a viewport");
    }

    /// A screen reader names every button of the page: a button with an icon by `aria-label`
    /// (the words shown beside icons are hidden on phones), any other by its text.
    #[test]
    fn every_button_has_a_label() {
        let html = super::HTML;
        let mut count = 0;
        for (at, _) in html.match_indices("<button") {
            let end = at + html[at..].find("</button>").expect("a closed button");
            let button = &html[at..end];
            let tag = &button[..button.find('>').expect("a closed tag")];
            let text = strip_tags(&button[tag.len() + 1..]);
            let named = if button.contains("<svg") { tag.contains("aria-label=\"") } else { !text.trim().is_empty() };
            assert!(named, "a button without a label: {tag}>");
            count += 1;
        }
        assert!(count >= 10, "found the page's buttons ({count})");
    }

    fn strip_tags(s: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in s.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                _ if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    }
}

//! The chat page: `assets/index.html` with `assets/style.css` and `assets/app.js` put inline,
//! so the page is one self-contained document (nothing fetched from anywhere, saved as one file).

use std::sync::LazyLock;

const HTML: &str = include_str!("assets/index.html");
const CSS: &str = include_str!("assets/style.css");
const JS: &str = include_str!("assets/app.js");

static PAGE: LazyLock<String> = LazyLock::new(|| {
    let page = HTML.replacen("/*STYLE*/", CSS, 1).replacen("/*SCRIPT*/", JS, 1);
    debug_assert!(page.len() == HTML.len() - "/*STYLE*//*SCRIPT*/".len() + CSS.len() + JS.len(), "both placeholders present once");
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
}

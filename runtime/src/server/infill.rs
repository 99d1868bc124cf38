//! Fill in the middle: llama.cpp's `POST /infill` (`input_prefix`, `input_suffix`,
//! `input_extra: [{filename, text}]`, `prompt`, and every option of `/completion`) and the
//! completions API's `suffix`. The prompt is built from the model's FIM tokens
//! (`engine::fim`); a model without them gets a 400 saying so.

use super::error::{parse_json, ApiError, ApiJson};
use super::routes::{blocking, completion_prompt as plain_prompt, llama_completion_of, n_predict};
use super::types::{LlamaCompletionRequest, Prompt, PromptInput};
use super::AppState;
use axum::extract::State;
use axum::response::Response;
use llamafile_engine::fim::{ExtraFile, FimInput};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Deserialize, Debug, Clone)]
pub struct ExtraChunk {
    pub text: String,
    /// llama.cpp's default name.
    #[serde(default = "tmp")]
    pub filename: String,
}

fn tmp() -> String {
    "tmp".into()
}

/// `POST /infill`: its own fields; the rest are `/completion`'s.
#[derive(Deserialize, Debug, Clone)]
pub struct InfillRequest {
    pub input_prefix: String,
    pub input_suffix: String,
    pub input_extra: Option<Vec<ExtraChunk>>,
    /// Text typed after the prefix.
    pub prompt: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// The tokens a FIM prompt may take: the context less the room to generate (`max_tokens`, at
/// most half the context; a quarter of it when not given).
pub fn budget(n_ctx: usize, max_tokens: Option<usize>) -> usize {
    n_ctx.saturating_sub(max_tokens.unwrap_or(n_ctx / 4).clamp(1, (n_ctx / 2).max(1)))
}

/// Build the prompt on a blocking thread: a model without FIM tokens, or markers and typed text
/// that do not fit, is the client's error.
async fn fim_prompt(
    st: &Arc<AppState>,
    prefix: String,
    suffix: String,
    prompt: String,
    extra: Vec<ExtraFile>,
    max_tokens: Option<usize>,
) -> Result<Vec<u32>, ApiError> {
    let model = st.model.clone();
    let budget = budget(model.n_ctx(), max_tokens);
    let built = blocking(move || {
        let input = FimInput { prefix: &prefix, suffix: &suffix, prompt: &prompt, extra: &extra };
        model.fim_prompt(&input, budget)
    })
    .await?
    .map_err(|e| ApiError::invalid_field("prompt", format!("could not tokenize the prompt: {e:#}")))?;
    built.map_err(|e| ApiError::bad_request(format!("fill-in-the-middle: {e}")))
}

pub async fn infill(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<InfillRequest>,
) -> Result<Response, ApiError> {
    let mut rest = req.rest;
    // `/completion`'s fields, with a placeholder prompt (the FIM prompt replaces it)
    rest.insert("prompt".into(), Value::String(String::new()));
    let body = serde_json::to_vec(&Value::Object(rest)).map_err(|e| ApiError::internal(e.to_string()))?;
    let opts: LlamaCompletionRequest = parse_json(&body)?;
    let max_tokens = n_predict(opts.n_predict)?;
    let extra = req
        .input_extra
        .unwrap_or_default()
        .into_iter()
        .map(|c| ExtraFile { filename: c.filename, text: c.text })
        .collect();
    let prompt =
        fim_prompt(&st, req.input_prefix, req.input_suffix, req.prompt.unwrap_or_default(), extra, max_tokens).await?;
    llama_completion_of(st, opts, prompt).await
}

/// The completions API's prompt with a `suffix`: a FIM prompt of the (text) prompt and the
/// suffix. An empty suffix on a model without FIM tokens is a plain completion (nothing follows
/// the hole, which is the prompt's end).
pub async fn completion_prompt(
    st: &Arc<AppState>,
    prompt: Prompt,
    suffix: &str,
    max_tokens: Option<usize>,
) -> Result<(Vec<u32>, Option<String>), ApiError> {
    if suffix.is_empty() && st.model.fim_tokens().required().is_err() {
        return plain_prompt(st, prompt).await;
    }
    let text = match prompt.single()? {
        PromptInput::Text(t) => t,
        PromptInput::Tokens(_) => {
            return Err(ApiError::invalid_field("prompt", "'suffix' needs the prompt as text, not token ids"))
        }
    };
    let ids = fim_prompt(st, text.clone(), suffix.to_string(), String::new(), Vec::new(), max_tokens).await?;
    Ok((ids, Some(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_to_generate() {
        assert_eq!(budget(4096, Some(128)), 3968);
        assert_eq!(budget(4096, None), 3072);
        assert_eq!(budget(4096, Some(100_000)), 2048, "at most half for the answer");
        assert_eq!(budget(2, Some(0)), 1);
    }
}

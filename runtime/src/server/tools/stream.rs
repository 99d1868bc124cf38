//! Streamed tool calls, as OpenAI sends them: text before a call as `delta.content`; for each
//! call a first delta with its `index`, `id`, `type: "function"`, `function.name` and
//! `function.arguments: ""`, then deltas with pieces of the arguments' JSON text. The reply is
//! read again as a whole at every piece (`ToolPlan::read`), and what it holds beyond what was
//! sent goes out; what is read only ever grows, so nothing sent is taken back.

use super::ToolPlan;
use serde_json::{json, Value};

#[derive(Default)]
pub struct ToolStream {
    text: String,
    /// Bytes of content sent.
    content_sent: usize,
    /// Per call sent: its id and the bytes of its arguments sent.
    calls: Vec<(String, usize)>,
}

impl ToolStream {
    /// A piece of the reply; the deltas to send.
    pub fn push(&mut self, plan: &ToolPlan, piece: &str) -> Vec<Value> {
        self.text.push_str(piece);
        self.deltas(plan, false)
    }

    /// The end of the reply: the last deltas.
    pub fn finish(&mut self, plan: &ToolPlan) -> Vec<Value> {
        self.deltas(plan, true)
    }

    /// Whether a call was sent (the finish reason is then `tool_calls`).
    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    fn deltas(&mut self, plan: &ToolPlan, done: bool) -> Vec<Value> {
        let p = plan.read(&self.text, done);
        let mut out = Vec::new();
        // Content stops once a call has begun (text the format puts after calls is not sent).
        if self.calls.is_empty() && p.content.len() > self.content_sent && p.content.is_char_boundary(self.content_sent)
        {
            out.push(json!({"content": &p.content[self.content_sent..]}));
            self.content_sent = p.content.len();
        }
        for (i, c) in p.calls.iter().enumerate() {
            if i == self.calls.len() {
                let id = plan.format.call_id();
                out.push(json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}));
                self.calls.push((id, 0));
            }
            let sent = &mut self.calls[i].1;
            if c.args.len() > *sent && c.args.is_char_boundary(*sent) {
                out.push(json!({"tool_calls": [{"index": i, "function": {"arguments": &c.args[*sent..]}}]}));
                *sent = c.args.len();
            }
        }
        out
    }
}

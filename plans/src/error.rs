use std::path::PathBuf;

use crate::Field;

/// Everything that can be wrong with a kvpr file or a model/workload description.
#[derive(Debug, thiserror::Error)]
pub enum PlansError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input kvpr will not read (a directory, a device, a file too large...).
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    /// An output path kvpr will not write (a device, a FIFO, a missing folder...).
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the field that failed (`.` for the document itself).
        field: String,
        message: String,
    },
    #[error("{path}: schema is {found:?}, this kvpr reads {expected:?}; regenerate the file with this version of kvpr")]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("unknown model preset {name:?}; known presets: {known}")]
    UnknownPreset { name: String, known: String },
    #[error("{path}: not a model kvpr can read: {reason}")]
    Model { path: PathBuf, reason: String },
    /// A checkpoint setting that changes the model's function and that kvpr
    /// does not implement: refused rather than computing another function.
    #[error("{path}: {key} = {value} is not supported: {reason}")]
    Unsupported {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    /// A workload number no plan can serve; the caller names where it came from.
    #[error("{field}: {reason}")]
    Workload { field: Field, reason: String },
    #[error("plan {path} was made for {field} = {plan}, but this run has {actual}; make a new plan with `kvpr plan` for this run")]
    Mismatch {
        path: PathBuf,
        field: String,
        plan: String,
        actual: String,
    },
    /// A run whose decode contexts the plan's steps do not all cover.
    #[error("{path} covers contexts {from}..={to} ({}), but this run needs {need_from}..={need_to} ({run_prompt_len} prompt tokens + {run_gen_len} new); make a plan that covers it with `kvpr plan`", made_for(*from, *prompt_len, *gen_len))]
    NotCovered {
        path: PathBuf,
        from: usize,
        to: usize,
        prompt_len: usize,
        gen_len: usize,
        need_from: usize,
        need_to: usize,
        run_prompt_len: usize,
        run_gen_len: usize,
    },
}

/// What a plan was made for, in the words of a coverage error.
fn made_for(from: usize, prompt_len: usize, gen_len: usize) -> String {
    if from <= 1 {
        format!("prompts up to {prompt_len} tokens + {gen_len} new")
    } else {
        format!("prompts of {prompt_len} tokens + {gen_len} new")
    }
}

pub type Result<T, E = PlansError> = std::result::Result<T, E>;

impl PlansError {
    /// The workload field the error is about, if it is about one.
    pub fn field(&self) -> Option<Field> {
        match self {
            PlansError::Workload { field, .. } => Some(*field),
            _ => None,
        }
    }

    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        PlansError::Invalid {
            path: path.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

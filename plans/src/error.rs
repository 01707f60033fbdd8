use std::path::PathBuf;

/// Everything that can be wrong with a kvpr file or a model/workload description.
#[derive(Debug, thiserror::Error)]
pub enum PlansError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("{what}: {reason}")]
    Workload { what: String, reason: String },
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

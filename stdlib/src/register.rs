//! Registration: each native function declared once (name, parameters, doc comment, body) with [`rhai_fns!`].
//!
//! It gives `pgimg defs` the signature and doc, adds the form without a trailing `[opts]`, records
//! the call in the journal, hands the body the [`Ctx`] (from the engine's default tag, set by
//! [`crate::register`]: no closure captures it) and turns its error into `file:line:col: name: cause`.

use std::any::{type_name, TypeId};
use std::sync::Arc;

pub use rhai::{Dynamic, ImmutableString as Str, Map, Module, Variant};
use rhai::{EvalAltResult, FuncRegistration, NativeCallContext, RhaiFunc};

use crate::api::{failure, location};
use crate::ctx::{Call, Ctx};
use crate::error::Result;
use crate::journal::{Action, Loc};

/// What a [`rhai_fns!`] declaration says: name, doc comment, parameters (name, type name,
/// type), and the name of a trailing options map that may be left out.
pub type Def = (&'static str, &'static str, Vec<Param>, Option<&'static str>);
type Param = (&'static str, &'static str, TypeId);
type Res<T> = std::result::Result<T, Box<EvalAltResult>>;
type Args = Vec<Dynamic>;

/// The body of a primitive: build context, location and arguments of the call.
pub trait Body<R>: Fn(&Ctx, &Loc, Args) -> Result<R> + Send + Sync + 'static {}
impl<R, F: Fn(&Ctx, &Loc, Args) -> Result<R> + Send + Sync + 'static> Body<R> for F {}

/// A primitive with an effect: recorded in the journal (and the plan) with its arguments.
pub fn action<R: Variant + Clone>(m: &mut Module, def: Def, body: impl Body<R>) {
    primitive(m, def, true, body)
}

/// A question about the image or the build (facts, parameters): not recorded.
pub fn query<R: Variant + Clone>(m: &mut Module, def: Def, body: impl Body<R>) {
    primitive(m, def, false, body)
}

/// Any other native function (the test API): the body gets the call context and raises its own errors.
pub fn function<R, F>(m: &mut Module, def: Def, body: F)
where
    R: Variant + Clone,
    F: Fn(&NativeCallContext, &Loc, Args) -> Res<R> + Send + Sync + 'static,
{
    add(m, def, move |nctx, args| body(nctx, &location(nctx), args));
}

fn primitive<R: Variant + Clone>(m: &mut Module, def: Def, record: bool, body: impl Body<R>) {
    let name = def.0;
    add(m, def, move |nctx, args| {
        let (loc, tag) = (location(nctx), nctx.tag());
        let ctx = tag.and_then(|t| t.read_lock::<Ctx>().map(|c| c.clone()));
        let ctx = ctx.ok_or_else(|| failure(&loc, name, "no build context in the engine"))?;
        if record {
            ctx.record_action(Action::new(name, &loc, &args));
        }
        let Some(steps) = ctx.steps.clone() else {
            return body(&ctx, &loc, args).map_err(|e| failure(&loc, name, e));
        };
        let call = Call {
            name,
            action: record,
            loc: &loc,
            args: &args,
        };
        let replayed = steps.before(&ctx, &call);
        if let Some(v) = replayed.map_err(|e| failure(&loc, name, e))? {
            let kind = v.type_name();
            let msg = || {
                format!(
                    "the step cache recorded a {kind}, not a {}",
                    type_name::<R>()
                )
            };
            return v.try_cast::<R>().ok_or_else(|| failure(&loc, name, msg()));
        }
        let value = body(&ctx, &loc, args).map_err(|e| failure(&loc, name, e))?;
        steps.after(&ctx, &Dynamic::from(value.clone()));
        Ok(value)
    });
}

/// Registers `def`, and its short form passing `#{}` for a trailing `[opts]`.
fn add<R, F>(m: &mut Module, (name, doc, mut params, opts): Def, body: F)
where
    R: Variant + Clone,
    F: Fn(&NativeCallContext, Args) -> Res<R> + Send + Sync + 'static,
{
    let body = Arc::new(body);
    params.extend(opts.map(|o| (o, type_name::<Map>(), TypeId::of::<Map>())));
    for &short in &[false, true][..=usize::from(opts.is_some())] {
        let params = &params[..params.len() - usize::from(short)];
        let info = params.iter().map(|(p, t, _)| format!("{p}: {t}"));
        let info = info.chain([type_name::<R>().into()]);
        let body = body.clone();
        let func = move |nctx: Option<NativeCallContext>, args: &mut [&mut Dynamic]| {
            let mut args: Vec<Dynamic> = args.iter().map(|a| (**a).clone()).collect();
            args.extend(short.then(|| Dynamic::from_map(Map::new())));
            body(&nctx.expect("registered with a context"), args).map(Dynamic::from)
        };
        let func = RhaiFunc::Method {
            func: rhai::Shared::new(func),
            has_context: true,
            is_pure: true,
            is_volatile: true,
        };
        let types: Vec<TypeId> = params.iter().map(|p| p.2).collect();
        let reg = FuncRegistration::new(name).with_comments([doc.trim_end()]);
        let reg = reg.with_params_info(info).in_global_namespace();
        reg.set_into_module_raw(m, types, func);
    }
}

/// `rhai_fns! { $vis fn $register; /// doc… \n action|query|function name(p: Type, …, [opts]) |ctx, loc| body; … }`
/// defines `$vis fn $register(&mut Module)`. Strings are `Str`; the body sees the parameters
/// by name; `[opts]` is a `Map` that may be left out (the body then gets an empty one).
#[macro_export]
macro_rules! rhai_fns {
    ($vis:vis fn $register:ident; $(
        $(#[doc = $doc:literal])*
        $kind:ident $name:ident($($p:ident: $t:ty),* $(,)? $([$o:ident])?) |$c:pat_param, $l:pat_param| $body:expr;
    )*) => { $vis fn $register(m: &mut $crate::register::Module) {$({
        let params = vec![$((stringify!($p), std::any::type_name::<$t>(), std::any::TypeId::of::<$t>())),*];
        let def = (stringify!($name), concat!($("///", $doc, "\n"),*), params, [$(stringify!($o))?].first().copied());
        $crate::register::$kind(m, def, move |$c, $l, args: Vec<$crate::register::Dynamic>| {
            let mut _args = args.into_iter();
            $(let $p: $t = _args.next().unwrap_or_default().cast();)*
            $(let $o: $crate::register::Map = _args.next().unwrap_or_default().cast();)?
            $body
        });
    })*}};
}

using Microsoft.AspNetCore.Http;

namespace PortAzure;

/// <summary>
/// Gives every problem response a <c>reason</c>, including those the framework writes itself (no route,
/// wrong method, an unhandled error), so clients can always branch on one field.
/// </summary>
public static class FallbackReason
{
    public static void Add(ProblemDetailsContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var extensions = context.ProblemDetails.Extensions;
        if (extensions.ContainsKey(Problems.ReasonKey))
        {
            return;
        }
        extensions[Problems.ReasonKey] = (context.ProblemDetails.Status ?? context.HttpContext.Response.StatusCode) switch
        {
            StatusCodes.Status400BadRequest => "bad_request",
            StatusCodes.Status404NotFound => "not_found",
            StatusCodes.Status405MethodNotAllowed => "method_not_allowed",
            StatusCodes.Status408RequestTimeout => "request_timeout",
            StatusCodes.Status413PayloadTooLarge => "body_too_large",
            StatusCodes.Status415UnsupportedMediaType => "unsupported_media_type",
            StatusCodes.Status431RequestHeaderFieldsTooLarge => "headers_too_large",
            >= 500 => "internal_error",
            var status => $"http_{status}",
        };
    }
}

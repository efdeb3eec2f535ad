using Microsoft.AspNetCore.Http;

namespace PortAzure;

/// <summary>RFC 7807 problem responses with a machine-readable <c>reason</c> extension.</summary>
public static class Problems
{
    public const string ReasonKey = "reason";

    public static IResult Create(int status, string reason, string detail, TimeSpan? retryAfter = null)
    {
        var extensions = new Dictionary<string, object?> { [ReasonKey] = reason };
        var problem = TypedResults.Problem(detail: detail, statusCode: status, title: Title(status), type: $"https://portazure.dev/problems/{reason}", extensions: extensions);
        return retryAfter is { } delay ? new WithRetryAfter(problem, delay) : problem;
    }

    private static string Title(int status) => status switch
    {
        400 => "Bad request",
        401 => "Unauthorized",
        404 => "Not found",
        409 => "Conflict",
        413 => "Payload too large",
        415 => "Unsupported media type",
        429 => "Too many requests",
        503 => "Service unavailable",
        _ => "Request failed",
    };

    private sealed class WithRetryAfter(IResult inner, TimeSpan delay) : IResult
    {
        public Task ExecuteAsync(HttpContext httpContext)
        {
            httpContext.Response.Headers.RetryAfter = ((int)Math.Ceiling(delay.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
            return inner.ExecuteAsync(httpContext);
        }
    }
}

using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace PortAzure.Security;

/// <summary>The operator API key check, the same at the Ingress edge and at the Dispatcher.</summary>
public static class AdminApiKey
{
    public const string HeaderName = "X-Api-Key";

    /// <summary>Outcome of checking a request's credentials.</summary>
    public enum Result
    {
        /// <summary>No key is configured: the operator API is closed.</summary>
        NotConfigured,
        Missing,
        Invalid,
        Valid,

        /// <summary>A key was sent, but not as one key: a header repeated, or an Authorization that is not <c>Bearer &lt;key&gt;</c>.</summary>
        Unreadable,
    }

    public static Result Check(HttpRequest request, string? configuredKey)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (string.IsNullOrEmpty(configuredKey))
        {
            return Result.NotConfigured;
        }
        string? presented = null;
        // An empty X-Api-Key (a client that always sends it) does not hide a Bearer key.
        if (request.Headers.TryGetValue(HeaderName, out var apiKey) && apiKey.Count == 1 && !string.IsNullOrEmpty(apiKey[0]))
        {
            presented = apiKey[0];
        }
        else if (request.Headers.Authorization is { Count: 1 } authorization &&
                 authorization[0] is { } value &&
                 value.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            presented = value["Bearer ".Length..].Trim();
        }
        if (string.IsNullOrEmpty(presented))
        {
            // Told "missing", a client that sent its key twice (or as "Bearer<TAB>key") looked for a header it had set.
            var sentSomething = apiKey.Count > 1 || request.Headers.Authorization.Count > 1
                || request.Headers.Authorization is { Count: 1 } one && !string.IsNullOrWhiteSpace(one[0]);
            return sentSomething ? Result.Unreadable : Result.Missing;
        }
        // Hash both sides first: FixedTimeEquals is constant-time only for equal lengths.
        var expected = SHA256.HashData(Encoding.UTF8.GetBytes(configuredKey));
        var actual = SHA256.HashData(Encoding.UTF8.GetBytes(presented));
        return CryptographicOperations.FixedTimeEquals(expected, actual) ? Result.Valid : Result.Invalid;
    }

    /// <summary>Writes the problem response for a failed check: 404 when closed, 401 otherwise.</summary>
    public static IResult Reject(Result result) => result switch
    {
        Result.NotConfigured => Problems.Create(StatusCodes.Status404NotFound, "operator_api_disabled",
            "The operator API is disabled: no Admin:ApiKey is configured."),
        Result.Missing => Problems.Create(StatusCodes.Status401Unauthorized, "api_key_missing",
            "Send the operator key as 'Authorization: Bearer <key>' or 'X-Api-Key'."),
        Result.Unreadable => Problems.Create(StatusCodes.Status401Unauthorized, "api_key_invalid",
            "The operator key could not be read: send it once, as 'Authorization: Bearer <key>' or 'X-Api-Key'."),
        _ => Problems.Create(StatusCodes.Status401Unauthorized, "api_key_invalid", "The operator key is not valid."),
    };
}

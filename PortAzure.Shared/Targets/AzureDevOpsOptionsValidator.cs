using Microsoft.Extensions.Options;
using PortAzure.Security;
using PortAzure.Signing;

namespace PortAzure.Targets;

/// <summary>Reports every configuration error at once, so one start-up names them all.</summary>
public sealed class AzureDevOpsOptionsValidator : IValidateOptions<AzureDevOpsOptions>
{
    public ValidateOptionsResult Validate(string? name, AzureDevOpsOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = new List<string>();
        if (!options.BaseUrl.IsAbsoluteUri || (options.BaseUrl.Scheme != Uri.UriSchemeHttps && options.BaseUrl.Scheme != Uri.UriSchemeHttp))
        {
            errors.Add("AzureDevOps:BaseUrl must be an absolute http or https URL.");
        }
        else if (!string.IsNullOrEmpty(options.BaseUrl.Query) || !string.IsNullOrEmpty(options.BaseUrl.Fragment))
        {
            errors.Add("AzureDevOps:BaseUrl must not carry a query or fragment.");
        }
        if (string.IsNullOrWhiteSpace(options.SignatureHeader) || !options.SignatureHeader.All(IsTokenChar))
        {
            errors.Add("AzureDevOps:SignatureHeader must be a valid HTTP header name.");
        }
        else if (!IsFreeRequestHeader(options.SignatureHeader))
        {
            // A content header is not added to the request's headers at all (the POST went unsigned and was refused 400); the
            // others the client or the relay sets itself.
            errors.Add($"AzureDevOps:SignatureHeader '{options.SignatureHeader}' is a header the relay or HTTP itself sets; choose another name (the default is X-Port-Signature) and the same in the service connection.");
        }
        // Configuration binds any number to an enum ("5"); AzureSignature.Compute would then throw before every POST.
        if (!Enum.IsDefined(options.SignatureFormat))
        {
            errors.Add($"AzureDevOps:SignatureFormat must be one of {string.Join(", ", Enum.GetNames<SignatureFormat>())}.");
        }
        // Org and webhook are taken in any case: a second entry for a target would silently lose to the first.
        var firstIndex = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        for (var i = 0; i < options.Targets.Count; i++)
        {
            var target = options.Targets[i];
            var targetName = $"{target.Org}/{target.Webhook}";
            if (!firstIndex.TryAdd(targetName, i))
            {
                errors.Add($"AzureDevOps:Targets:{i} repeats the target '{targetName}' of AzureDevOps:Targets:{firstIndex[targetName]}; keep one entry per target.");
            }
            if (!TargetNames.IsValidOrg(target.Org))
            {
                errors.Add($"AzureDevOps:Targets:{i}:Org '{target.Org}' is not a valid Azure DevOps organisation name.");
            }
            if (!TargetNames.IsValidWebhook(target.Webhook))
            {
                errors.Add($"AzureDevOps:Targets:{i}:Webhook '{target.Webhook}' is not a valid incoming webhook name ([-_A-Za-z0-9]).");
            }
            if (PortOptions.SecretShapeError($"AzureDevOps:Targets:{i}:Secret", target.Secret) is { } secretError)
            {
                errors.Add(secretError);
            }
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    private static readonly HashSet<string> SetByTheRelay = new(StringComparer.OrdinalIgnoreCase)
    {
        "Host", "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Expect",
        WebhookHeaders.IdempotencyKey, WebhookHeaders.RunId, "traceparent", "tracestate", "baggage",
    };

    private static bool IsFreeRequestHeader(string name)
    {
        if (SetByTheRelay.Contains(name))
        {
            return false;
        }
        using var probe = new HttpRequestMessage();
        return probe.Headers.TryAddWithoutValidation(name, "x");
    }

    private static bool IsTokenChar(char c) => char.IsAsciiLetterOrDigit(c) || "!#$%&'*+-.^_`|~".Contains(c, StringComparison.Ordinal);
}

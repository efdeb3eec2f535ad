using Microsoft.Extensions.Options;

namespace PortAzure.Security;

/// <summary>Operator API access (<c>Admin:*</c>). With no key the operator API is closed.</summary>
public sealed class AdminOptions
{
    public const string SectionName = "Admin";

    /// <summary>Shortest key accepted: the key can be tried online without limit, and it opens the replay of dead letters.</summary>
    public const int MinApiKeyLength = 16;

    public string? ApiKey { get; set; }
}

/// <summary>A key, when set, long enough not to be guessed.</summary>
public sealed class AdminOptionsValidator : IValidateOptions<AdminOptions>
{
    public ValidateOptionsResult Validate(string? name, AdminOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrEmpty(options.ApiKey))
        {
            return ValidateOptionsResult.Success;
        }
        var errors = new List<string>();
        if (options.ApiKey.Length < AdminOptions.MinApiKeyLength)
        {
            errors.Add($"Admin:ApiKey must be at least {AdminOptions.MinApiKeyLength} characters (a long random value: it opens the replay of dead letters, which starts pipeline runs).");
        }
        // A header value cannot carry it otherwise (Kestrel trims spaces and refuses other bytes): a key read from a
        // file ending in a newline would start and then refuse every call.
        if (options.ApiKey.AsSpan().ContainsAnyExceptInRange('!', '~'))
        {
            errors.Add("Admin:ApiKey must be visible ASCII characters only, without spaces or a trailing newline.");
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
